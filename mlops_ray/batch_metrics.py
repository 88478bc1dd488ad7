"""Prometheus metrics of a pipeline run, for batch jobs that no scraper can reach while they run.

Written at the end of every run (succeeded or failed) with prometheus-client, to a file for
node-exporter's textfile collector and, when ``automate.metrics.pushgateway_url`` is set, to a
Pushgateway (the two ways Prometheus documents for batch jobs:
https://prometheus.io/docs/practices/instrumentation/#batch-jobs). Names are fixed by
../shared/CONTRACTS.md:

- ``mlops_stage_duration_seconds{pipeline,stage}``: wall time of each stage run this time, seconds.
- ``mlops_rows_total{pipeline,stage,outcome}``: rows a stage read/kept/quarantined/wrote, this run.
- ``mlops_best_metric{pipeline,metric}``: e.g. ``validation_roc_auc`` (tune), ``test_roc_auc`` (evaluate).
- ``mlops_last_success_timestamp_seconds{pipeline}``: Unix time of the last successful run. A failed
  run keeps the previous value (read back from the textfile; on the Pushgateway the failed run
  pushes without it, and ``pushadd`` leaves the old one in place), so an alert on its age fires.
- ``mlops_run_status{pipeline,status}``: 1 for the status of the latest run.

Every label takes a bounded set of values (stage names, fixed outcomes, metric names). A
registry is created per call: importing this module registers nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_ray.config import BatchMetricsConfig

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client import CollectorRegistry

    from mlops_ray.pipeline import RunRecord

logger = logging.getLogger(__name__)

LAST_SUCCESS = "mlops_last_success_timestamp_seconds"
RUN_STATUSES = ("succeeded", "failed")


def textfile_path(cfg: BatchMetricsConfig, home_root: Path, pipeline: str) -> Path:
    """Where the textfile goes: ``cfg.textfile_path`` (relative = under home) or ``<home>/metrics/<pipeline>.prom``."""
    if not cfg.textfile_path:
        return home_root / "metrics" / f"{pipeline}.prom"
    path = Path(cfg.textfile_path).expanduser()
    return path if path.is_absolute() else home_root / path  # never the job's temporary working dir


def previous_last_success(path: Path, pipeline: str) -> float | None:
    """``mlops_last_success_timestamp_seconds{pipeline=...}`` from an earlier textfile, if any."""
    if not path.is_file():
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        for fam in text_string_to_metric_families(path.read_text()):
            for sample in fam.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("pipeline") == pipeline:
                    return float(sample.value)
    except ValueError:  # an unreadable old file is replaced, not trusted
        logger.warning("could not parse %s; the last-success timestamp restarts", path)
    return None


def run_registry(record_data: dict[str, Any], last_success: float | None,
                 with_last_success: bool = True) -> "CollectorRegistry":
    """A fresh registry holding the metrics of one run record (see the module docstring)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry()
    pipeline = record_data.get("pipeline", "pipeline")
    dur = Gauge("mlops_stage_duration_seconds", "Wall time of each pipeline stage in the latest run, seconds.",
                ["pipeline", "stage"], registry=reg)
    best = Gauge("mlops_best_metric", "Headline model metrics of the latest run (validation and test).",
                 ["pipeline", "metric"], registry=reg)
    status = Gauge("mlops_run_status", "1 for the status of the latest run, 0 for the others.",
                   ["pipeline", "status"], registry=reg)
    for stage, entry in record_data.get("stages", {}).items():
        if entry.get("duration_s") is not None:
            dur.labels(pipeline, stage).set(entry["duration_s"])
        for metric, value in (entry.get("metrics") or {}).items():
            best.labels(pipeline, metric).set(value)
    for s in RUN_STATUSES:
        status.labels(pipeline, s).set(1.0 if record_data.get("status") == s else 0.0)
    reg.register(_RowsCollector(pipeline, record_data))
    if with_last_success and last_success is not None:
        Gauge(LAST_SUCCESS, "Unix time of the last successful pipeline run, seconds.", ["pipeline"],
              registry=reg).labels(pipeline).set(last_success)
    return reg


class _RowsCollector:
    """``mlops_rows_total``: a counter family without the ``_created`` series (meaningless for a batch run)."""

    def __init__(self, pipeline: str, record_data: dict[str, Any]):
        self.pipeline = pipeline
        self.record_data = record_data

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily("mlops_rows", "Rows a stage processed in the latest run, by outcome.",
                                  labels=["pipeline", "stage", "outcome"])
        for stage, entry in self.record_data.get("stages", {}).items():
            for outcome, n in (entry.get("rows") or {}).items():
                fam.add_metric([self.pipeline, stage, outcome], float(n))
        yield fam


def export_run_metrics(record: "RunRecord", cfg: BatchMetricsConfig) -> dict[str, Any]:
    """Write the run's metrics to the textfile and push them to the Pushgateway (if configured).

    Never raises: a metrics sink that is down must not fail a pipeline run. What happened is
    logged and stored in the run record under ``batch_metrics``.

    Returns:
        ``{"textfile": path, "pushgateway": url | None, "errors": [...]}``.
    """
    data = record.data
    pipeline = data.get("pipeline", "pipeline")
    succeeded = data.get("status") == "succeeded"
    path = textfile_path(cfg, record.home.root, pipeline)
    last_success = time.time() if succeeded else previous_last_success(path, pipeline)
    result: dict[str, Any] = {"textfile": str(path), "pushgateway": cfg.pushgateway_url, "errors": []}
    try:
        from prometheus_client import write_to_textfile

        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), run_registry(data, last_success))  # writes a temp file, then renames
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        result["errors"].append(f"textfile {path}: {type(exc).__name__}: {exc}")
    if cfg.pushgateway_url:
        try:
            from prometheus_client import pushadd_to_gateway

            pushadd_to_gateway(cfg.pushgateway_url, job=cfg.pushgateway_job, grouping_key={"pipeline": pipeline},
                               registry=run_registry(data, last_success, with_last_success=succeeded),
                               timeout=cfg.push_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            result["errors"].append(f"pushgateway {cfg.pushgateway_url}: {type(exc).__name__}: {exc}")
    for err in result["errors"]:
        logger.warning("batch metrics not exported: %s", err)
    data["batch_metrics"] = result
    try:
        record.save()
    except OSError:  # pragma: no cover - the record's own failure is reported by the runner
        pass
    return result
