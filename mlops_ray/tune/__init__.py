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


def _trial(config: dict[str, Any], X_train=None, y_train=None, X_val=None, y_val=None, seed: int = 0) -> None:
    """One Tune trial: fit, score on validation, report and checkpoint."""
    from ray import tune
    from sklearn.metrics import roc_auc_score

    family = config["family"]
    params = dict(config.get(family) or {})
    model = build_estimator(family, params, seed)
    model.fit(X_train, y_train)
    proba = model.predict_proba(X_val)[:, 1]
    auc = float(roc_auc_score(y_val, proba))
    if not math.isfinite(auc):
        raise TuneError(f"trial {family} {params} produced a non-finite ROC AUC ({auc})")
    with tempfile.TemporaryDirectory() as d:
        save_model(model, Path(d) / MODEL_FILE)
        (Path(d) / "params.json").write_text(json.dumps({"family": family, "params": params}, default=float))
        tune.report({"roc_auc": auc, "family": family}, checkpoint=tune.Checkpoint.from_directory(d))


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
        cpus = ray_session().cluster_resources().get("CPU", 0)
        if cfg.cpus_per_trial > cpus:
            raise TuneError(f"tune.cpus_per_trial={cfg.cpus_per_trial} but the Ray cluster has {cpus} CPUs in all; "
                            "lower tune.cpus_per_trial or add nodes.")
        X_tr, y_tr = load_split(preprocess_path, "train")
        X_va, y_va = load_split(preprocess_path, "validation")
        logger.info("tune: train %s, validation %s, %d families x %d samples",
                    X_tr.shape, X_va.shape, len(cfg.search_space), cfg.num_samples)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, X_train=X_tr, y_train=y_tr, X_val=X_va, y_val=y_va, seed=cfg.seed),
            {"cpu": cfg.cpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(cfg.search_space),
            # concurrency is the search algorithm's setting once one is given (Tune ignores
            # TuneConfig.max_concurrent_trials then)
            tune_config=tune.TuneConfig(metric=cfg.metric, mode="max", num_samples=cfg.num_samples,
                                        search_alg=BasicVariantGenerator(random_state=cfg.seed,
                                                                         max_concurrent=cfg.max_concurrent_trials)),
            run_config=tune.RunConfig(name="experiment", storage_path=str(out / "tune"), verbose=0),
        )
        grid = tuner.fit()
        failed = [r for r in grid if r.error is not None]
        ok = [r for r in grid if r.error is None and r.metrics and math.isfinite(r.metrics.get(cfg.metric, math.nan))]
        if not ok:
            errs = "; ".join(str(r.error)[:200] for r in failed[:3])
            raise TuneError(f"tune: all {len(grid)} trials failed; first errors: {errs}")
        best = grid.get_best_result(metric=cfg.metric, mode="max", filter_nan_and_inf=True)
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


