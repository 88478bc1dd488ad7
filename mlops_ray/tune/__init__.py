"""Tune: parallel hyperparameter search on Ray Tune over scikit-learn and Keras model families.

The Spark -> Ray hand-off: the preprocess Parquet is read once on the driver into NumPy
(:func:`mlops_ray.preprocess.load_split`) and put in Ray's object store once through
``tune.with_parameters``; every trial on a node maps the same read-only arrays (zero-copy).
The search is Optuna's TPE sampler through Ray Tune's ``OptunaSearch`` (bounded concurrency),
with ASHA stopping poor iterative trials early (gradient boosting reports every
``tune.iterations_per_report`` iterations, the Keras MLP every epoch). Every trial reports
the four validation metrics and checkpoints its model; the best by ``tune.metric`` (its
direction from :data:`mlops_ray.config.METRIC_MODES`) is refit on train (or train +
validation) and handed to evaluation, with each family's best model kept beside it.

The experiment lives in ``cache/tune/.experiments/<key>/`` while it runs: an interrupted
experiment is continued (``Tuner.restore``) by the next run of the stage with the same inputs
(``mlops-ray tune --resume`` insists on it); finished trials are not run again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import TuneConfig
from mlops_ray.errors import TuneError
from mlops_ray.home import Home
from mlops_ray.tune.resources import check_resources
from mlops_ray.tune.storage import apply_latest_snapshot, atomic_local_filesystem, damaged_state_files
from mlops_ray.tune.trial import TrialSettings, report_trial, run_trial, scheduler_milestones, validation_metrics

logger = logging.getLogger(__name__)

MODEL_FILES = {"skops": "model.skops", "keras": "model.keras"}
MODEL_FILE = MODEL_FILES["skops"]  # the scikit-learn families' file name

__all__ = ["TuneResult", "run_tune", "load_model", "save_model", "model_file", "validation_metrics",
           "report_trial", "check_resources", "experiment_dir"]


@dataclass(frozen=True)
class TuneResult:
    """The search's outcome: the chosen (refit) model and every family's best trial.

    Attributes:
        family, params: the best trial's family and hyperparameters.
        best_score: its validation ``metric``.
        iterations: training steps the best trial reached (boosting iterations, epochs, or 1).
        model_path: the model handed to evaluation (refit per ``tune.refit``).
        family_best: family -> {"score", "params", "trial_id", "model_path"}.
        trials, trials_failed, trials_stopped_early: counts over the experiment.
        mlflow_run_id: the experiment's parent MLflow run (None when not tracked).
        resumed: the experiment continued an interrupted one.
    """

    path: str
    key: str
    family: str
    params: dict[str, Any]
    metric: str
    best_score: float
    trials: int
    trials_failed: int
    model_path: str
    cache_hit: bool
    iterations: int = 1
    trials_stopped_early: int = 0
    refit: str = "train"
    family_best: dict[str, dict[str, Any]] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    resumed: bool = False


def model_file(directory: str | Path) -> Path:
    """The model file in ``directory`` (``model.skops`` or ``model.keras``).

    Raises:
        TuneError: neither exists.
    """
    for name in MODEL_FILES.values():
        if (Path(directory) / name).exists():
            return Path(directory) / name
    raise TuneError(f"no model file ({' or '.join(MODEL_FILES.values())}) in {directory}.")


def save_model(model, directory: str | Path) -> Path:
    """Write ``model`` into ``directory``: skops for scikit-learn (no pickle), ``.keras`` for the Keras MLP."""
    from mlops_ray.tune.families import KerasMLPClassifier

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, KerasMLPClassifier):
        path = directory / MODEL_FILES["keras"]
        model.save(path)
        return path
    import skops.io as sio

    path = directory / MODEL_FILES["skops"]
    sio.dump(model, str(path))
    return path


def load_model(path: str | Path):
    """Load a model written by :func:`save_model` (a file, or a folder holding one).

    skops files load trusting only the scikit-learn/NumPy types skops reports for the file.

    Raises:
        RegistryError: the skops file holds types outside scikit-learn/NumPy.
        TuneError: no model file in the folder.
    """
    path = Path(path)
    if path.is_dir():
        path = model_file(path)
    if path.suffix == ".keras":
        from mlops_ray.tune.families import KerasMLPClassifier

        return KerasMLPClassifier.load(path)
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=str(path))
    allowed = [t for t in untrusted if t.startswith(("sklearn.", "numpy.", "builtins."))]
    unknown = sorted(set(untrusted) - set(allowed))
    if unknown:
        from mlops_ray.errors import RegistryError

        raise RegistryError(f"model file {path} contains types outside sklearn/numpy: {unknown}; refusing to load.")
    return sio.load(str(path), trusted=allowed)


def experiment_dir(home: Home, key: str) -> Path:
    """Where the experiment with cache key ``key`` runs (kept until it finishes, for resume)."""
    return home.cache_dir("tune", key).parent / ".experiments" / key


def _trainable(settings: TrialSettings, data_refs: dict[str, Any], cfg: TuneConfig):
    from ray import tune

    def trainable(config: dict[str, Any], data: dict[str, Any] | None = None) -> None:
        run_trial(config, data, settings)

    return tune.with_resources(tune.with_parameters(trainable, data=data_refs),
                               {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})


def _search_and_scheduler(cfg: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from mlops_ray.tune.families import OptunaSpace, to_param_space

    n = len(cfg.search_space)
    if cfg.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=cfg.seed)
        search = ConcurrencyLimiter(OptunaSearch(space=OptunaSpace(cfg.search_space), sampler=sampler,
                                                 metric=cfg.metric, mode=cfg.mode),
                                    max_concurrent=cfg.max_concurrent_trials)
        param_space, num_samples = None, cfg.num_samples * n
    else:
        search = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials)
        param_space, num_samples = to_param_space(cfg.search_space), cfg.num_samples
    if cfg.early_stopping == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=cfg.asha_grace_period,
                                  reduction_factor=cfg.asha_reduction_factor, max_t=10_000)
    else:
        scheduler = FIFOScheduler()
    return search, scheduler, param_space, num_samples


def run_tune(cfg: TuneConfig, ray_session, preprocess_path: str, preprocess_key: str, home: Home, *,
             resume: bool = False, tracking: Callable[[], tuple[Any, str]] | None = None) -> TuneResult:
    """Run the search, refit the best configuration and keep it (cached by inputs, config and code).

    Args:
        cfg: the ``tune`` slice.
        ray_session: returns the connected ``ray`` module (``Sessions.ray``); called only when the
            search is not cached yet.
        preprocess_path: output folder of preprocess.
        resume: require an interrupted experiment for these inputs and continue it (an
            interrupted one is continued even without this flag).
        tracking: returns ``(MlflowClient, experiment_id)`` for trial tracking (``tune.track_trials``).

    Progress: one INFO line per finished trial on the ``mlops_ray.tune.progress`` logger.

    Raises:
        TuneError: every trial failed (lists the first errors); a trial no node can hold.
        ConfigError: ``resume`` with nothing to resume (not retried by the runner).
    """
    key = cache_key("tune", preprocess_key, cfg.fingerprint(), code_version("tune"))
    exp_root = experiment_dir(home, key)
    if resume and (home.cache_dir("tune", key) / "_SUCCESS").exists():
        logger.info("tune: nothing to resume, the experiment for these inputs finished (%s)", home.cache_dir("tune", key))
    elif resume and not (exp_root / "experiment").exists():
        from mlops_ray.errors import ConfigError

        raise ConfigError(f"nothing to resume: no interrupted experiment for this config and data at {exp_root}. "
                          "Run `mlops-ray tune` (without --resume) to start one.")
    snapshot = apply_latest_snapshot(exp_root / "state_snapshots", exp_root / "experiment")
    if snapshot is not None:
        logger.info("tune: the interrupted experiment's state is its last consistent save (%s)", snapshot)
    damaged = damaged_state_files(exp_root / "experiment") if (exp_root / "experiment").is_dir() else []
    if resume and damaged:
        from mlops_ray.errors import ConfigError

        raise ConfigError(f"cannot resume the interrupted experiment at {exp_root / 'experiment'}: its state "
                          f"cannot be read back ({'; '.join(damaged)}); the process writing it was probably killed "
                          "mid-write. Run `mlops-ray tune` (without --resume) to start the search over (the damaged "
                          "folder is kept beside the result as damaged_experiment/).")
    state: dict[str, Any] = {"resumed": False}

    def build(out: Path) -> None:
        from ray import tune

        from mlops_ray import preprocess as pre
        from mlops_ray.tune.progress import StateSnapshot, TrialProgress

        ray = ray_session()
        check_resources(ray.nodes(), cfg.cpus_per_trial, cfg.gpus_per_trial)
        X_tr, y_tr = pre.load_split(preprocess_path, "train")  # the only reads of the data: trials share these
        X_va, y_va = pre.load_split(preprocess_path, "validation")
        logger.info("tune: train %s, validation %s, %d families x %d trials, %s search, %s scheduler",
                    X_tr.shape, X_va.shape, len(cfg.search_space), cfg.num_samples, cfg.search, cfg.early_stopping)
        data_refs = {"X_train": X_tr, "y_train": y_tr, "X_val": X_va, "y_val": y_va}
        settings = TrialSettings(metric=cfg.metric, seed=cfg.seed, cpus=cfg.threads_per_trial,
                                 class_weight=cfg.class_weight, iterations_per_report=cfg.iterations_per_report,
                                 time_limit_s=cfg.time_limit_per_trial_s, attempts_dir=str(exp_root / "attempts"),
                                 checkpoint_at=scheduler_milestones(cfg.asha_grace_period, cfg.asha_reduction_factor)
                                 if cfg.early_stopping == "asha" else ())
        trainable = _trainable(settings, data_refs, cfg)
        exp_root.mkdir(parents=True, exist_ok=True)
        exp_path = exp_root / "experiment"
        # Tune's own console output (a configuration box, tmp paths, snapshot warnings) is replaced
        # by one line per finished trial (``progress``); set these variables to get it back.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        total = cfg.num_samples * len(cfg.search_space)
        started = time.monotonic()
        fs = atomic_local_filesystem()
        if damaged and exp_path.exists():
            logger.warning("tune: the interrupted experiment at %s cannot be continued, its state cannot be read "
                           "back (%s); starting the search over (the folder is kept as %s)", exp_path,
                           "; ".join(damaged), exp_root / "damaged_experiment")
            shutil.rmtree(exp_root / "damaged_experiment", ignore_errors=True)
            shutil.move(str(exp_path), str(exp_root / "damaged_experiment"))
        if exp_path.exists() and tune.Tuner.can_restore(str(exp_path), storage_filesystem=fs):
            logger.info("tune: continuing the interrupted experiment at %s (finished trials are kept)", exp_path)
            state["resumed"] = True
            tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False, storage_filesystem=fs)
        else:
            shutil.rmtree(exp_path, ignore_errors=True)
            shutil.rmtree(exp_root / "attempts", ignore_errors=True)
            shutil.rmtree(exp_root / "state_snapshots", ignore_errors=True)
            search, scheduler, param_space, num_samples = _search_and_scheduler(cfg)
            tuner = tune.Tuner(
                trainable, param_space=param_space,
                tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, num_samples=num_samples,
                                            search_alg=search, scheduler=scheduler, reuse_actors=cfg.reuse_actors),
                run_config=tune.RunConfig(
                    name="experiment", storage_path=str(exp_root), storage_filesystem=fs, verbose=0,
                    callbacks=[TrialProgress(total), StateSnapshot(str(exp_root / "state_snapshots"))],
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        grid = tuner.fit()
        summary = _summarise(grid, cfg, out, time.monotonic() - started)
        refit_path = _refit(cfg, summary, X_tr, y_tr, X_va, y_va, out)
        summary["model_file"] = refit_path.name
        if cfg.track_trials and tracking is not None:
            from mlops_ray.tune.tracking import log_experiment

            client, experiment_id = tracking()
            summary["mlflow_run_id"] = log_experiment(client, experiment_id, grid, cfg, key, summary)
        summary["resumed"] = state["resumed"]
        (out / "best.json").write_text(json.dumps(summary, indent=2, default=float))
        shutil.move(str(exp_path), str(out / "tune"))
        for kept in ("attempts", "damaged_experiment"):
            if (exp_root / kept).exists():
                shutil.move(str(exp_root / kept), str(out / kept))
        shutil.rmtree(exp_root, ignore_errors=True)

    entry = cached(home, "tune", key, build)
    best = json.loads((entry.path / "best.json").read_text())
    logger.info("tune: best %s %s, validation %s=%.4f", best["family"], best["params"], cfg.metric, best["best_score"])
    return TuneResult(path=str(entry.path), key=key, family=best["family"], params=best["params"],
                      metric=cfg.metric, best_score=float(best["best_score"]), trials=best["trials"],
                      trials_failed=best["trials_failed"], model_path=str(entry.path / best["model_file"]),
                      cache_hit=entry.hit, iterations=int(best["iterations"]),
                      trials_stopped_early=int(best["trials_stopped_early"]), refit=best["refit"],
                      family_best={f: {**v, "model_path": str(entry.path / v["model_path"])}
                                   for f, v in best["family_best"].items()},
                      mlflow_run_id=best.get("mlflow_run_id"), resumed=bool(best.get("resumed")))


def _summarise(grid, cfg: TuneConfig, out: Path, elapsed_s: float) -> dict[str, Any]:
    """best.json's content: the best trial, each family's best (model copied), every trial's outcome."""
    failed = [r for r in grid if r.error is not None]
    ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(cfg.metric, math.nan))]
    if not ok:
        errs = "; ".join(str(r.error).strip().splitlines()[-1][:300] for r in failed[:3])
        raise TuneError(f"tune: all {len(grid)} trials failed; first errors: {errs}")
    sign = 1 if cfg.mode == "max" else -1
    family_best: dict[str, dict[str, Any]] = {}
    trials = []
    for r in grid:
        m = r.metrics or {}
        fam = r.config.get("family")
        stopped_early = r.error is None and fam in _planned_steps(cfg) and \
            m.get("iterations", 0) < _planned_steps(cfg)[fam](r.config.get(fam) or {})
        trials.append({"trial_id": m.get("trial_id"), "family": fam, "params": r.config.get(fam),
                       **{k: m.get(k) for k in ("roc_auc", "pr_auc", "f1", "log_loss", "iterations", "cpu_s", "wall_s",
                                                "node_id")},
                       "stopped_early": bool(stopped_early),
                       "error": str(r.error).strip().splitlines()[-1][:500] if r.error else None})
        if r in ok and r.checkpoint is not None and \
                (fam not in family_best or sign * m[cfg.metric] > sign * family_best[fam]["score"]):
            family_best[fam] = {"score": m[cfg.metric], "params": r.config.get(fam), "trial_id": m.get("trial_id"),
                                "iterations": m.get("iterations"), "_result": r}
    for fam, fb in family_best.items():
        r = fb.pop("_result")
        with r.checkpoint.as_directory() as d:
            src = next(p for p in (Path(d) / n for n in MODEL_FILES.values()) if p.exists())
            dest = out / "family_best" / fam
            dest.mkdir(parents=True)
            shutil.copy(src, dest / src.name)
            saved = json.loads((Path(d) / "params.json").read_text())
        if saved.get("iterations") != fb["iterations"] and saved.get("scores"):
            # checkpoints are written where the trial may end (ASHA rungs, last step); should a trial still end
            # elsewhere, hand over what the checkpoint holds and say so with its own score and iterations
            fb.update(score=saved["scores"][cfg.metric], iterations=saved["iterations"])
        fb["model_path"] = str((dest / src.name).relative_to(out))
    best_family = max(family_best, key=lambda f: sign * family_best[f]["score"])
    best = family_best[best_family]
    return {"family": best_family, "params": best["params"], "metric": cfg.metric, "best_score": best["score"],
            "iterations": int(best["iterations"] or 1), "trial_id": best["trial_id"], "refit": cfg.refit,
            "trials": len(grid), "trials_failed": len(failed),
            "trials_stopped_early": sum(t["stopped_early"] for t in trials), "elapsed_s": elapsed_s,
            "family_best": {f: {k: v for k, v in fb.items()} for f, fb in sorted(family_best.items())},
            "all_trials": trials}


def _planned_steps(cfg: TuneConfig) -> dict[str, Callable[[dict[str, Any]], int]]:
    """Steps a trial of an iterative family reports when nothing stops it."""
    return {"hist_gradient_boosting": lambda p: int(p.get("max_iter", 100)),
            "keras_mlp": lambda p: int(p.get("epochs", 5))}


def _refit(cfg: TuneConfig, summary: dict[str, Any], X_tr, y_tr, X_va, y_va, out: Path) -> Path:
    """The model handed to evaluation, per ``tune.refit``.

    'train': the best trial's own checkpointed model (already fit on train, as far as it got).
    'train_validation': the best configuration fit again on train + validation, with the
    iterations/epochs the best trial reached (its validation metrics are then in-sample).
    """
    import numpy as np

    from mlops_ray.tune.families import fit_in_steps
    from mlops_ray.tune.resources import cap_threads

    fam, params = summary["family"], dict(summary["params"] or {})
    if cfg.refit == "train":
        src = out / summary["family_best"][fam]["model_path"]
        return Path(shutil.copy(src, out / src.name))
    if fam == "hist_gradient_boosting":
        params["max_iter"] = summary["iterations"]
    if fam == "keras_mlp":
        params["epochs"] = summary["iterations"]
    X, y = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va])
    t0 = time.monotonic()
    with cap_threads(cfg.threads_per_trial, tensorflow=(fam == "keras_mlp")):
        model = fit_in_steps(fam, params, X, y, seed=cfg.seed, n_jobs=cfg.threads_per_trial,
                             class_weight=cfg.class_weight, iterations_per_report=10**9)
    summary["refit_s"] = time.monotonic() - t0
    summary["refit_rows"] = int(len(y))
    logger.info("tune: refit %s on train + validation (%d rows) in %.1f s", fam, len(y), summary["refit_s"])
    return save_model(model, out)
