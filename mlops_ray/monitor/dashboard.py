"""The Grafana dashboard of a deployed model, built with grafana-foundation-sdk.

Rows: traffic, latency, errors, replicas, drift, model quality — over the series of
../shared/CONTRACTS.md ("Metrics"): Serve's ``ray_serve_*`` and the model's ``ray_mlops_*``. Every
query aggregates away the per-replica, per-worker and per-node labels Ray adds (``sum by``/``max by``
the contract's own labels only). Drift and rolling-metric gauges come from the one drift monitor
actor (:mod:`mlops_ray.monitor.online`), so ``max by (feature)`` just drops Ray's labels (and a
restarted actor's stale series). Panels draw the ``monitor`` config's alert thresholds.

The JSON (Grafana's dashboard model, schemaVersion of the SDK's Grafana 10.1 branch) uses a
``datasource`` variable of type Prometheus, so it imports into any Grafana: Dashboards → New →
Import → upload the file → pick the Prometheus data source. ``mlops-ray monitor-dashboard --out
PATH`` writes it; ``cluster/grafana/mlops_ray_dashboard.json`` is the checked-in copy for the
default config (a test keeps the two equal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_ray.config import MonitorConfig
from mlops_ray.monitor.alerts import EXPRESSIONS

#: Where the generated dashboard for the default config is checked in (relative to the repository root).
CHECKED_IN = Path("cluster") / "grafana" / "mlops_ray_dashboard.json"

_DS = "${datasource}"
_RATE = "5m"


@dataclass(frozen=True)
class PanelSpec:
    """One panel: title, unit, description and its PromQL queries (legend format -> expression)."""

    row: str
    title: str
    unit: str
    description: str
    queries: tuple[tuple[str, str], ...]
    threshold: float | None = None
    min_val: float | None = None
    max_val: float | None = None


def panel_specs(cfg: MonitorConfig) -> list[PanelSpec]:
    """The dashboard's panels, in order (thresholds from ``cfg``)."""
    q99 = "histogram_quantile({q}, sum by (le) (rate({m}_bucket[" + _RATE + "])))"
    http = "ray_serve_http_request_latency_ms"
    model = "ray_mlops_inference_latency_ms"
    return [
        PanelSpec("Traffic", "HTTP requests by status code", "reqps",
                  "Requests per second at the Serve proxy, all replicas and proxies.",
                  (("{{status_code}}", f"sum by (status_code) (rate(ray_serve_num_http_requests_total[{_RATE}]))"),)),
        PanelSpec("Traffic", "Predictions by model version and label", "ops",
                  "Answered records per second (ray_mlops_predictions_total), all replicas.",
                  (("v{{model_version}} label {{label}}",
                    f"sum by (model_version, label) (rate(ray_mlops_predictions_total[{_RATE}]))"),)),
        PanelSpec("Latency", "HTTP latency p50 / p99", "ms",
                  "At the Serve proxy, from its latency histogram summed over proxies.",
                  (("p50", q99.format(q=0.5, m=http)), ("p99", q99.format(q=0.99, m=http))),
                  threshold=cfg.max_latency_p99_ms, min_val=0),
        PanelSpec("Latency", "Model latency p50 / p99", "ms",
                  "Validate, transform and score one request inside a replica (ray_mlops_inference_latency_ms).",
                  (("p50", q99.format(q=0.5, m=model)), ("p99", q99.format(q=0.99, m=model))), min_val=0),
        PanelSpec("Errors", "Error answers by code", "reqps",
                  "Error answers per second by the API's error code (ray_mlops_request_errors_total).",
                  (("{{code}}", f"sum by (code) (rate(ray_mlops_request_errors_total[{_RATE}]))"),)),
        PanelSpec("Errors", "5xx share", "percentunit",
                  "Share of HTTP answers that are server errors (client 4xx not counted); the alert threshold "
                  "is drawn.",
                  (("5xx share", f'(sum(rate(ray_serve_num_http_requests_total{{status_code=~"5.."}}[{_RATE}])) '
                                 f"or vector(0)) / sum(rate(ray_serve_num_http_requests_total[{_RATE}]))"),),
                  threshold=cfg.max_error_rate, min_val=0),
        PanelSpec("Errors", "Invalid fields by field", "reqps",
                  "Invalid fields of predict requests per second (field of the input schema or _unknown).",
                  (("{{field}}", f"sum by (field) (rate(ray_mlops_validation_errors_total[{_RATE}]))"),)),
        PanelSpec("Replicas", "Healthy replicas", "short",
                  "Healthy replicas per deployment (ray_serve_deployment_replica_healthy).",
                  (("{{application}} / {{deployment}}",
                    "sum by (application, deployment) (ray_serve_deployment_replica_healthy)"),), min_val=0),
        PanelSpec("Drift", "PSI per feature", "short",
                  "Population Stability Index of each feature over the serving window against the training "
                  "reference, from the bin counts of all replicas (drift monitor actor).",
                  (("{{feature}}", EXPRESSIONS["MlopsFeatureDrift"]),), threshold=cfg.psi_threshold, min_val=0),
        PanelSpec("Drift", "Null share per feature", "percentunit",
                  "Share of null values of each feature over the serving window, all replicas.",
                  (("{{feature}}", "max by (feature) (ray_mlops_feature_null_share)"),), min_val=0, max_val=1),
        PanelSpec("Drift", "Records in the drift window", "short",
                  "Records answered over the window the drift figures cover, all replicas.",
                  (("records", "max(ray_mlops_window_records)"),), min_val=0),
        PanelSpec("Model quality", "Rolling accuracy, F1, ROC AUC", "percentunit",
                  "From feedback labels received over the window, joined to the logged predictions by request id; "
                  "the ROC AUC alert threshold is drawn.",
                  (("{{metric}}", "max by (metric) (ray_mlops_rolling_metric)"),),
                  threshold=cfg.min_roc_auc, min_val=0, max_val=1),
        PanelSpec("Model quality", "Prediction score distribution", "ops",
                  "Answered records per second by predicted probability bucket (ray_mlops_prediction_score).",
                  (("≤ {{le}}", f"sum by (le) (rate(ray_mlops_prediction_score_bucket[{_RATE}]))"),), min_val=0),
    ]


def panel_queries(cfg: MonitorConfig) -> dict[str, list[str]]:
    """Panel title -> its PromQL expressions (what a test runs through Prometheus)."""
    return {p.title: [q for _, q in p.queries] for p in panel_specs(cfg)}


def dashboard(cfg: MonitorConfig, pipeline: str = "flights") -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (a dict, ready for ``json.dumps``).

    Raises:
        ImportError: grafana-foundation-sdk is not installed (``pip install grafana-foundation-sdk``).
    """
    try:
        from grafana_foundation_sdk.builders import common as gc
        from grafana_foundation_sdk.builders import dashboard as gd
        from grafana_foundation_sdk.builders import prometheus as gp
        from grafana_foundation_sdk.builders import timeseries as gt
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common as mc
        from grafana_foundation_sdk.models import dashboard as md
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the Grafana dashboard needs grafana-foundation-sdk: pip install grafana-foundation-sdk") \
            from e

    ds = md.DataSourceRef(type_val="prometheus", uid=_DS)
    b = (gd.Dashboard(f"mlops_ray: {pipeline} model health")
         .uid(f"mlops-ray-{pipeline}")
         .description("Traffic, latency, errors, replicas, drift and rolling quality of the deployed model "
                      "(generated by mlops_ray/monitor/dashboard.py).")
         .tags(["mlops_ray", pipeline, "generated"])
         .refresh("30s")
         .time("now-1h", "now")
         .timezone("browser")
         .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    row, ids = None, iter(range(1, 1000))
    for p in panel_specs(cfg):
        if p.row != row:
            b = b.with_row(gd.Row(p.row).id(next(ids)))
            row = p.row
        panel = (gt.Panel().id(next(ids)).title(p.title).description(p.description).unit(p.unit).datasource(ds)
                 .height(8).span(12)
                 .legend(gc.VizLegendOptions().show_legend(True).display_mode(mc.LegendDisplayMode.LIST)
                         .placement(mc.LegendPlacement.BOTTOM).calcs([]))
                 .tooltip(gc.VizTooltipOptions().mode(mc.TooltipDisplayMode.MULTI).sort(mc.SortOrder.DESCENDING)))
        if p.min_val is not None:
            panel = panel.min(p.min_val)
        if p.max_val is not None:
            panel = panel.max(p.max_val)
        if p.threshold is not None:
            panel = panel.thresholds(gd.ThresholdsConfig().mode(md.ThresholdsMode.ABSOLUTE).steps(
                [md.Threshold(value=None, color="green"), md.Threshold(value=p.threshold, color="red")]))
        for i, (legend, expr) in enumerate(p.queries):
            panel = panel.with_target(gp.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i))
                                      .datasource(ds))
        b = b.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(b.build()))


def dashboard_json(cfg: MonitorConfig, pipeline: str = "flights") -> str:
    """:func:`dashboard` as the text written to files (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(dashboard(cfg, pipeline), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_dashboard(cfg: MonitorConfig, path: str | Path, pipeline: str = "flights") -> Path:
    """Write :func:`dashboard_json` to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dashboard_json(cfg, pipeline))
    return path
