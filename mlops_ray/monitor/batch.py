"""Batch drift report on Spark: a file or table of raw records against a model version's training reference.

``mlops-ray monitor --data PATH`` reads the records (CSV with the flights columns, or Parquet),
derives the pre-encoding features exactly as preprocessing did (weather and plane lookups of
that model version), counts every feature's exact values in one Spark aggregation
(:func:`mlops_ray.preprocess.value_counts.spark_value_counts`), bins them with the reference's
own edges (the convention of :mod:`mlops_ray.preprocess.reference`), and scores each feature
with the detectors of :mod:`mlops_ray.monitor.drift` (PSI and null rate for numeric features;
Jensen–Shannon distance, chi-squared, unseen-category share and null rate for categorical ones).
The reference is the ``reference_stats.json`` stored with the dataset manifest and the model
version, never a recomputation. A categorical value outside the feature spec's vocabulary counts
in the reference's ``other`` bucket when the training data had such values, else as unseen.
Outputs ``drift.json`` and a self-contained ``drift.html``.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlops_ray.config import MonitorConfig
from mlops_ray.errors import DataError
from mlops_ray.monitor.drift import CategoricalDriftDetector, NumericDriftDetector, nan_to_none

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

OTHER = "<other>"


def check_records_path(path: str) -> None:
    """Fail before any engine starts when a local ``path`` does not exist (a URI is left to Spark).

    Raises:
        DataError: no such file or folder.
    """
    if "://" not in path and not Path(path).exists():
        raise DataError(f"monitor --data {path}: no such file or folder; give a CSV or Parquet file or folder "
                        f"of raw flight records.")


def read_records(spark: "SparkSession", path: str) -> "DataFrame":
    """Raw flight records from a Parquet file/folder or a CSV file (header, the flights columns).

    Raises:
        DataError: the path does not exist, or holds no rows.
    """
    from mlops_ray.ingest import FLIGHTS_DDL

    check_records_path(path)
    if path.endswith((".csv", ".csv.gz")):
        # Columns by header name, never by position (a schema given to the CSV reader is applied by position):
        # read every column as text, then cast each flights column to its type. A value that is no such
        # number becomes null and counts in the feature's null share; a missing column is refused below.
        from pyspark.sql import functions as F

        types = dict(c.split(" ", 1) for c in FLIGHTS_DDL.split(", ") if not c.startswith("_corrupt_record"))

        def typed(c: str):
            if types[c] != "INT":
                return F.col(f"`{c}`").try_cast(types[c]).alias(c)
            d = F.col(f"`{c}`").try_cast("DOUBLE")  # "352.0": pandas writes an int column holding nulls so
            return F.when(d == F.floor(d), d.try_cast("INT")).alias(c)  # a fraction is no INT: null

        raw = spark.read.csv(path, header=True, nullValue="NA")
        df = raw.select(*[typed(c) if c in types else F.col(f"`{c}`") for c in raw.columns])
    else:
        df = spark.read.parquet(path)
    if df.limit(1).count() == 0:
        raise DataError(f"monitor --data {path}: no rows to compare.")
    return df


def drift_report(spark: "SparkSession", records: "DataFrame", model_dir: str | Path, cfg: MonitorConfig) -> dict:
    """Per-feature drift of ``records`` against the reference in ``model_dir`` (a model version's files).

    Returns:
        ``{"rows", "reference_rows", "features": {name: report}, "drifted": [...], "insufficient": [...]}``.

    Raises:
        DataError: ``model_dir`` has no reference_stats.json (a version registered before drift
            references existed), ``records`` lacks a required input column of the model (its feature
            spec's input schema), or a feature holds an infinite value.
    """
    from mlops_ray.preprocess import load_feature_spec
    from mlops_ray.preprocess.recipes import spark_derived
    from mlops_ray.preprocess.reference import bin_index
    from mlops_ray.preprocess.value_counts import spark_value_counts

    model_dir = Path(model_dir)
    ref_path = model_dir / "reference_stats.json"
    if not ref_path.is_file():
        raise DataError(f"{model_dir} has no reference_stats.json: register the model again with this version of "
                        "mlops_ray (its preprocess writes the drift reference).")
    ref = json.loads(ref_path.read_text())
    spec = load_feature_spec(model_dir)
    missing = [n for n, (_, required) in spec.inputs.items() if required and n not in records.columns]
    if missing:
        raise DataError(f"monitor --data: the data lacks the model's required input column(s) {missing}; it has "
                        f"{sorted(records.columns)}. Give the raw records the model scores (the columns "
                        f"{list(spec.inputs)}; GET /v1/model lists them with their types).")
    joined = spark_derived(spark, records, spec, model_dir / "lookups")
    counts = spark_value_counts(joined, tuple(ref["numeric"]), tuple(ref["categorical"]))
    features: dict[str, Any] = {}
    for name, r in ref["numeric"].items():
        nc = counts.numeric[name]
        det = NumericDriftDetector(psi_threshold=cfg.psi_threshold, null_rate_threshold=cfg.null_share_threshold)
        if not r["counts"]:
            features[name] = {"kind": "numeric", "status": "insufficient_data",
                              "reasons": ["the reference has no non-null value"]}
            continue
        det.fit_binned(r["edges"], r["counts"], r["nulls"])
        batch = np.zeros(len(r["edges"]) + 1, dtype=np.int64)
        np.add.at(batch, bin_index(r["edges"], nc.values), nc.counts)
        features[name] = {**det.score_counts(batch, nc.nulls), "edges": r["edges"],
                          "reference_counts": r["counts"], "counts": batch.tolist()}
    for name, r in ref["categorical"].items():
        cc = counts.categorical[name]
        ref_counts = {e["value"]: e["count"] for e in r["categories"]}
        if r.get("other"):
            ref_counts[OTHER] = r["other"]
        det = CategoricalDriftDetector(js_threshold=0.1, null_rate_threshold=cfg.null_share_threshold)
        det.fit_counts(ref_counts, r["nulls"])
        batch: dict[str, int] = {}
        for v, c in zip(cc.values, cc.counts):
            key = v if v in ref_counts or not r.get("other") else OTHER
            batch[key] = batch.get(key, 0) + int(c)
        features[name] = det.score_counts(batch, cc.nulls)
    return nan_to_none({"rows": counts.rows, "reference_rows": ref["rows"], "features": features,
                        "drifted": sorted(k for k, v in features.items() if v["status"] == "drift"),
                        "insufficient": sorted(k for k, v in features.items() if v["status"] == "insufficient_data")})


def write_report(report: dict, out_dir: str | Path, *, data: str, model: str) -> tuple[Path, Path]:
    """Write ``drift.json`` and ``drift.html`` into ``out_dir``; returns both paths."""
    import jinja2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {**report, "data": data, "model": model, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / "drift.json").write_text(json.dumps(doc, indent=2))
    html = jinja2.Environment(autoescape=True).from_string(_TEMPLATE).render(r=doc, fmt=_fmt)
    (out / "drift.html").write_text(html)
    return out / "drift.json", out / "drift.html"


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>drift report</title>
<style>body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;color:#1d2330}
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.drift{color:#b00020;font-weight:600}.muted{color:#777}</style></head><body>
<h1>Drift report</h1>
<p>{{ r.rows }} rows of <code>{{ r.data }}</code> against the training reference of <code>{{ r.model }}</code>
({{ r.reference_rows }} rows) &middot; {{ r.created }}</p>
<p>{% if r.drifted %}<span class="drift">drifted: {{ r.drifted|join(", ") }}</span>{% else %}no feature drifted{% endif %}</p>
<table><tr><th>feature</th><th>kind</th><th>status</th><th>PSI</th><th>JS distance</th><th>null share (reference)</th>
<th>unseen share</th><th>why</th></tr>
{% for name, f in r.features.items() %}<tr><td>{{ name }}</td><td>{{ f.kind }}</td>
<td class="{{ 'drift' if f.status == 'drift' else 'muted' }}">{{ f.status }}</td><td>{{ fmt(f.get('psi')) }}</td>
<td>{{ fmt(f.get('js_distance')) }}</td><td>{{ fmt(f.get('null_rate')) }} ({{ fmt(f.get('reference_null_rate')) }})</td>
<td>{{ fmt(f.get('new_category_share')) }}</td><td>{{ (f.get("reasons") or [])|join("; ") }}</td></tr>{% endfor %}
</table>
{% if r.rolling %}<h2>Concept drift: feedback</h2>
{% if r.rolling.rows and r.rolling.min_rows and r.rolling.rows < r.rolling.min_rows %}<p>{{ r.rolling.rows }} labelled
predictions received over the last {{ r.rolling.window_s }} s (prediction log, joined by request id): fewer than
monitor.min_window_rows = {{ r.rolling.min_rows }}, metrics not computed.</p>
{% elif r.rolling.rows %}<p>{{ r.rolling.rows }} labelled predictions received over the last {{ r.rolling.window_s }} s
(prediction log, joined by request id): accuracy {{ fmt(r.rolling.accuracy) }}, F1 {{ fmt(r.rolling.f1) }},
ROC AUC {{ fmt(r.rolling.roc_auc) }}.</p>{% else %}<p class="muted">No feedback label received over the last
{{ r.rolling.window_s }} s.</p>{% endif %}{% endif %}
</body></html>
"""
