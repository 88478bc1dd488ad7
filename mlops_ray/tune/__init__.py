"""Tune: parallel hyperparameter search on Ray Tune over scikit-learn model families.

The Spark -> Ray hand-off: the preprocess Parquet is read once on the driver into NumPy
(:func:`mlops_ray.preprocess.load_split`) and put in Ray's object store once through
``tune.with_parameters``; every trial reads the same shared arrays. Each trial fits one
family with sampled hyperparameters on train, reports validation ROC AUC with
``tune.report``, and checkpoints its model (skops format). The best trial by validation
ROC AUC wins.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import TuneConfig
from mlops_ray.errors import TuneError
from mlops_ray.home import Home
from mlops_ray.tune.families import build_estimator, to_param_space

logger = logging.getLogger(__name__)

MODEL_FILE = "model.skops"


@dataclass(frozen=True)
class TuneResult:
    """The best trial: family, hyperparameters, validation metric and the saved model."""

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


def save_model(model, path: str | Path) -> None:
    """Write a scikit-learn model in skops format (no pickle)."""
    import skops.io as sio

    sio.dump(model, str(path))


def load_model(path: str | Path):
    """Load a skops model, trusting only the types skops reports for this file."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=str(path))
    allowed = [t for t in untrusted if t.startswith(("sklearn.", "numpy.", "builtins."))]
    unknown = sorted(set(untrusted) - set(allowed))
    if unknown:
        from mlops_ray.errors import RegistryError

        raise RegistryError(f"model file {path} contains types outside sklearn/numpy: {unknown}; refusing to load.")
    return sio.load(str(path), trusted=allowed)


def validation_metrics(y_true, proba) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), F1 at 0.5 and log loss of ``proba`` (shape (n_rows,)) against 0/1 labels.

    A metric that is undefined on these labels (one class only) is NaN. Definitions: scikit-learn's
    ``roc_auc_score``, ``average_precision_score``, ``f1_score``, ``log_loss``.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, f1_score, log_loss, roc_auc_score

    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=float)
    if not np.all(np.isfinite(p)):
        return {"roc_auc": math.nan, "pr_auc": math.nan, "f1": math.nan, "log_loss": math.nan}
    two_classes = len(np.unique(y)) == 2
    return {"roc_auc": float(roc_auc_score(y, p)) if two_classes else math.nan,
            "pr_auc": float(average_precision_score(y, p)) if two_classes else math.nan,
            "f1": float(f1_score(y, (p >= 0.5).astype(int), zero_division=0)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))}


def report_trial(metrics: dict[str, Any], metric: str, checkpoint=None) -> None:
    """``tune.report`` for every family's trainable, after checking the configured metric.

    Raises:
        TuneError: ``metric`` is missing (names it and the keys that were reported) or is NaN/infinite.
            Tune marks just this trial failed, with this reason; the experiment goes on.
    """
    from ray import tune

    if metric not in metrics:
        raise TuneError(f"the trial reported no '{metric}' (tune.metric); it reported {sorted(metrics)}.")
    value = metrics[metric]
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TuneError(f"validation {metric} is {value} (not finite); the trial is failed and never chosen as best.")
    tune.report(metrics, checkpoint=checkpoint)


def _trial(config: dict[str, Any], X_train=None, y_train=None, X_val=None, y_val=None, seed: int = 0,
           metric: str = "roc_auc") -> None:
    """One Tune trial: fit, score on validation, report every metric and checkpoint.

    Raises:
        TuneError: the configured metric is NaN or infinite (from :func:`report_trial`); Tune marks
            the trial failed with this reason and it can never be chosen as best.
    """
    from ray import tune

    family = config["family"]
    params = dict(config.get(family) or {})
    model = build_estimator(family, params, seed)
    model.fit(X_train, y_train)
    scores = validation_metrics(y_val, model.predict_proba(X_val)[:, 1])
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / MODEL_FILE)
        (Path(d) / "params.json").write_text(json.dumps({"family": family, "params": params}, default=float))
        report_trial({**scores, "family": family}, metric, checkpoint=tune.Checkpoint.from_directory(d))


def check_resources(nodes: list[dict[str, Any]], cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail fast when no single node can ever hold one trial (a trial never spans nodes).

    Args:
        nodes: ``ray.nodes()`` (alive and dead; only alive ones count).

    Raises:
        TuneError: naming what one trial asks and what the largest node has.
    """
    alive = [n for n in nodes if n.get("Alive", n.get("alive", False))]
    cpu = max((n.get("Resources", {}).get("CPU", 0.0) for n in alive), default=0.0)
    gpu = max((n.get("Resources", {}).get("GPU", 0.0) for n in alive), default=0.0)
    if cpus_per_trial > cpu or gpus_per_trial > gpu:
        raise TuneError(f"one trial asks for {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU "
                        f"(tune.cpus_per_trial, tune.gpus_per_trial) but the largest of the {len(alive)} Ray node(s) "
                        f"has {cpu:g} CPU and {gpu:g} GPU, so no trial could ever start. Lower the request or add a "
                        "node that large.")


def run_tune(cfg: TuneConfig, ray_session, preprocess_path: str, preprocess_key: str, home: Home) -> TuneResult:
    """Run the search and keep the best model.

    Args:
        cfg: the ``tune`` slice.
        ray_session: returns the connected ``ray`` module (``Sessions.ray``); called only when the
            search is not cached yet.
        preprocess_path: output folder of preprocess.

    Raises:
        TuneError: every trial failed (the message lists the first errors).
    """
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from mlops_ray.preprocess import load_split

    key = cache_key("tune", preprocess_key, cfg.fingerprint(), code_version("tune"))

    def build(out: Path) -> None:
        check_resources(ray_session().nodes(), cfg.cpus_per_trial, cfg.gpus_per_trial)
        X_tr, y_tr = load_split(preprocess_path, "train")
        X_va, y_va = load_split(preprocess_path, "validation")
        logger.info("tune: train %s, validation %s, %d families x %d samples",
                    X_tr.shape, X_va.shape, len(cfg.search_space), cfg.num_samples)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, X_train=X_tr, y_train=y_tr, X_val=X_va, y_val=y_va, seed=cfg.seed,
                                 metric=cfg.metric),
            {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(cfg.search_space),
            # concurrency is the search algorithm's setting once one is given (Tune ignores
            # TuneConfig.max_concurrent_trials then)
            tune_config=tune.TuneConfig(metric=cfg.metric, mode=cfg.mode, num_samples=cfg.num_samples,
                                        search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                                                         max_concurrent=cfg.max_concurrent_trials)),
            run_config=tune.RunConfig(name="experiment", storage_path=str(out / "tune"), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
        )
        grid = tuner.fit()
        failed = [r for r in grid if r.error is not None]
        ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(cfg.metric, math.nan))]
        if not ok:
            errs = "; ".join(str(r.error)[:200] for r in failed[:3])
            raise TuneError(f"tune: all {len(grid)} trials failed; first errors: {errs}")
        best = grid.get_best_result(metric=cfg.metric, mode=cfg.mode, filter_nan_and_inf=True)
        with best.checkpoint.as_directory() as d:
            import shutil

            shutil.copy(Path(d) / MODEL_FILE, out / MODEL_FILE)
            chosen = json.loads((Path(d) / "params.json").read_text())
        trials = [{"family": r.config.get("family"), "params": r.config.get(r.config.get("family")),
                   cfg.metric: (r.metrics or {}).get(cfg.metric), "error": str(r.error) if r.error else None}
                  for r in grid]
        (out / "best.json").write_text(json.dumps({
            **chosen, "metric": cfg.metric, "best_score": best.metrics[cfg.metric],
            "trials": len(grid), "trials_failed": len(failed), "all_trials": trials}, indent=2, default=float))

    entry = cached(home, "tune", key, build)
    best = json.loads((entry.path / "best.json").read_text())
    logger.info("tune: best %s %s, validation %s=%.4f", best["family"], best["params"], cfg.metric, best["best_score"])
    return TuneResult(path=str(entry.path), key=key, family=best["family"], params=best["params"],
                      metric=cfg.metric, best_score=float(best["best_score"]), trials=best["trials"],
                      trials_failed=best["trials_failed"], model_path=str(entry.path / MODEL_FILE),
                      cache_hit=entry.hit)


