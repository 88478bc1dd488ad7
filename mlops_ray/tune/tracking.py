"""MLflow tracking of a Tune experiment: one parent run, one nested child run per trial.

Logged from the driver after the search (trials never talk to the tracking server, so a
tracking server that is slow or down cannot fail a trial). The parent run holds the search
settings and the best trial; each child (tag ``mlflow.parentRunId``) holds its trial's family,
hyperparameters (``<family>.<name>``), every reported step's metrics (step = iterations/epochs)
and its end state: FINISHED, or FAILED with the error in the ``error`` tag.
"""

from __future__ import annotations

import math
import time
from typing import Any

from mlops_ray.config import TuneConfig

_METRICS = ("roc_auc", "pr_auc", "f1", "log_loss", "cpu_s", "wall_s", "peak_rss_mb")


def _params(family: str, params: dict[str, Any] | None) -> dict[str, str]:
    return {"family": family, **{f"{family}.{k}": str(v) for k, v in (params or {}).items()}}


def log_experiment(client, experiment_id: str, grid, cfg: TuneConfig, key: str, summary: dict[str, Any]) -> str:
    """Log the finished experiment ``grid`` (Tune's ResultGrid); returns the parent run id."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    parent = client.create_run(experiment_id, run_name=f"tune-{key}",
                               tags={"mlops_ray.stage": "tune", "mlops_ray.tune_key": key})
    pid = parent.info.run_id
    settings = {"metric": cfg.metric, "mode": cfg.mode, "search": cfg.search, "early_stopping": cfg.early_stopping,
                "num_samples_per_family": cfg.num_samples, "max_concurrent_trials": cfg.max_concurrent_trials,
                "cpus_per_trial": cfg.cpus_per_trial, "seed": cfg.seed, "refit": cfg.refit,
                "class_weight": cfg.class_weight, "best_family": summary["family"]}
    client.log_batch(pid, params=[Param(k, str(v)) for k, v in settings.items()],
                     metrics=[Metric(f"best_validation_{cfg.metric}", float(summary["best_score"]), now, 0),
                              Metric("trials", summary["trials"], now, 0),
                              Metric("trials_failed", summary["trials_failed"], now, 0)])
    for r in grid:
        fam = r.config.get("family")
        trial_id = (r.metrics or {}).get("trial_id") or r.path.rsplit("/", 1)[-1]
        child = client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                                  tags={"mlflow.parentRunId": pid, "mlops_ray.trial_id": str(trial_id),
                                        "mlops_ray.family": str(fam)})
        cid = child.info.run_id
        metrics = []
        history = r.metrics_dataframe
        rows = history.to_dict("records") if history is not None and len(history) else []
        for row in rows:
            step = int(row.get("iterations") or row.get("training_iteration") or 0)
            ts = int(float(row.get("timestamp", now / 1000)) * 1000)
            metrics += [Metric(m, float(row[m]), ts, step) for m in _METRICS
                        if isinstance(row.get(m), (int, float)) and math.isfinite(row[m])]
        tags = [] if r.error is None else [RunTag("error", str(r.error).strip()[-4000:])]
        client.log_batch(cid, params=[Param(k, v) for k, v in _params(fam, r.config.get(fam)).items()],
                         metrics=metrics, tags=tags)
        client.set_terminated(cid, status="FAILED" if r.error is not None else "FINISHED")
    client.set_terminated(pid, status="FINISHED")
    return pid
