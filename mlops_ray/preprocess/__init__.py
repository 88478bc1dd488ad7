"""Preprocess on Spark: label and split, derived features (:mod:`.recipes`), a Spark ML encoding
pipeline fit on the training split only, and Parquet outputs with a manifest.

Output folder (``cache/preprocess/<key>/``, ../shared/CONTRACTS.md)::

    data/manifest.json               schema, rows per split, content fingerprint, feature names
    data/{train,validation,test}/    Parquet: serving input columns, label, features array<double> (fixed width)
    feature_spec.json                Spark-free transform from exact train statistics (serving applies it with NumPy)
    reference_stats.json             drift reference from train: null shares, exact quantile bins with counts,
                                     category counts (:mod:`.reference`; the manifest names it with its SHA-256)
    lookups/{weather,planes}/        lookup tables the serving path joins, as in training (flights recipe)
    spark_pipeline/                  the fitted pyspark.ml PipelineModel
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import PreprocessConfig
from mlops_ray.errors import DataError
from mlops_ray.home import Home
from mlops_ray.preprocess.derive import spark_flights_with_lookups, spark_planes_lookup, spark_weather_lookup
from mlops_ray.preprocess.encode import feature_spec_from_counts, fit_encoder
from mlops_ray.preprocess.feature_spec import FeatureSpec
from mlops_ray.preprocess.recipes import input_schema, labelled, outcome_columns
from mlops_ray.preprocess.reference import reference_stats
from mlops_ray.preprocess.value_counts import spark_value_counts

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

__all__ = ["PreprocessResult", "run_preprocess", "load_split", "load_feature_spec", "spark_features", "SPLITS"]


@dataclass(frozen=True)
class PreprocessResult:
    """Where preprocess wrote its outputs, rows per split, feature width and content fingerprint."""

    path: str
    key: str
    rows: dict[str, int]
    width: int
    fingerprint: str
    cache_hit: bool

    @property
    def data_path(self) -> str:
        return str(Path(self.path) / "data")


def spark_features(rows: "DataFrame", weather_lookup: "DataFrame | None", planes_lookup: "DataFrame | None",
                   pipeline: "PipelineModel", spec: FeatureSpec) -> "DataFrame":
    """Validated raw rows -> same rows plus ``features`` array<double> of width ``spec.width``.

    The flights recipe joins the two lookups first; recipe 'table' needs none (pass None).
    """
    from pyspark.ml.functions import vector_to_array

    derived = rows if spec.recipe == "table" else \
        spark_flights_with_lookups(rows, weather_lookup, planes_lookup, spec.timezone)
    encoded = pipeline.transform(derived)
    return encoded.withColumn("features", vector_to_array("features_vec", dtype="float64"))


def content_fingerprint(df: "DataFrame", spec: FeatureSpec) -> str:
    """SHA-256 over sorted per-row xxhash64 values, the schema (names and types), and the spec rounded to 1e-9.

    Independent of partitioning: row hashes are sorted before hashing, and every fitted statistic
    (hence every feature value) is computed exactly (:mod:`mlops_ray.preprocess.value_counts`).
    """
    from pyspark.sql import functions as F

    cols = [c for c in df.columns]
    hashes = sorted(r[0] for r in df.select(F.xxhash64(*cols)).collect())
    h = hashlib.sha256()
    h.update(np.asarray(hashes, dtype=np.int64).tobytes())
    h.update(df.schema.simpleString().encode())  # names and types: not nullability, not source metadata (JDBC's)
    h.update(spec.rounded_blob())
    return h.hexdigest()


def _file_entry(path: Path, relative_to: Path) -> dict[str, str]:
    """``{"path": <relative path>, "sha256": <hex>}`` of a file the manifest points at."""
    import os

    return {"path": os.path.relpath(path, relative_to), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def run_preprocess(cfg: PreprocessConfig, spark_session: "Callable[[], SparkSession]", ingest_path: str,
                   validate_path: str, validate_key: str, home: Home, table: str = "flights") -> PreprocessResult:
    """Label, split, derive, fit the encoder on train, write features and the manifest.

    ``spark_session`` returns the SparkSession; it is called only when the output is not cached yet.
    ``table`` is the ingest table validate checked (``ingest.main_table``); the flights recipe also
    reads the ``weather`` and ``planes`` tables of the same ingest.

    Raises:
        DataError: a split has no rows, a single class in train, a numeric feature null in all of train,
            a configured column missing from the table, or (recipe 'table') a null label.
    """
    from pyspark.sql import functions as F

    key = cache_key("preprocess", validate_key, table, cfg.fingerprint(), code_version("preprocess"))

    def build(out: Path) -> None:
        spark = spark_session()
        valid = spark.read.parquet(str(Path(validate_path) / "valid"))
        schema = input_schema(cfg, valid.schema, table)
        if cfg.recipe == "flights":
            weather = spark_weather_lookup(spark.read.parquet(str(Path(ingest_path) / "weather")))
            planes = spark_planes_lookup(spark.read.parquet(str(Path(ingest_path) / "planes")))
            weather.write.parquet(str(out / "lookups" / "weather"))
            planes.write.parquet(str(out / "lookups" / "planes"))
            weather = spark.read.parquet(str(out / "lookups" / "weather"))
            planes = spark.read.parquet(str(out / "lookups" / "planes"))
        else:
            weather = planes = None

        def derived(df: "DataFrame") -> "DataFrame":
            return df if weather is None else spark_flights_with_lookups(df, weather, planes, cfg.timezone)

        rows = labelled(valid, cfg)
        unassigned = rows.filter(F.col("split").isNull()).count()
        if unassigned:
            logger.warning("preprocess: %d rows fall in no split month and are left out", unassigned)
        rows = rows.filter(F.col("split").isNotNull()).cache()
        joined = derived(rows.filter(F.col("split") == "train"))
        counts = spark_value_counts(joined, cfg.numeric_features, cfg.categorical_features)
        spec = feature_spec_from_counts(counts, cfg.numeric_features, cfg.categorical_features, cfg.max_categories,
                                        cfg.impute_strategy, cfg.timezone, tuple(n for n, _, _ in schema),
                                        recipe=cfg.recipe, input_schema=schema, outcome_columns=outcome_columns(cfg))
        spec.save(out / "feature_spec.json")
        (out / "reference_stats.json").write_text(json.dumps(
            reference_stats(counts, {c.name: c.labels for c in spec.categorical}, cfg.reference_bins),
            indent=2, sort_keys=True))
        pipeline = fit_encoder(joined, spec)
        pipeline.write().save(str(out / "spark_pipeline"))

        output_columns = [*spec.inputs, "label", "features"]
        feats = spark_features(rows, weather, planes, pipeline, spec).select(*output_columns, "split")
        feats.write.partitionBy("split").parquet(str(out / "_by_split"))
        split_rows = {}
        for s in SPLITS:
            part_dir = out / "_by_split" / f"split={s}"
            if not part_dir.is_dir():
                raise DataError(f"preprocess: split '{s}' has no rows; check preprocess.split months (flights) or "
                                f"preprocess.hash_split shares (table) against the data (and ingest.sample_fraction).")
            spark.read.parquet(str(part_dir)).write.parquet(str(out / "data" / s))
            split_rows[s] = spark.read.parquet(str(out / "data" / s)).count()
        import shutil

        shutil.rmtree(out / "_by_split")
        all_rows = spark.read.parquet(*[str(out / "data" / s) for s in SPLITS])
        fp = content_fingerprint(all_rows, spec)
        label_counts = {str(r["label"]): r["count"] for r in
                        spark.read.parquet(str(out / "data" / "train")).groupBy("label").count().collect()}
        if len(label_counts) < 2:
            raise DataError(f"preprocess: the train split has a single class {label_counts}; expected both classes "
                            "(check the label definition: label_delay_min, or label_column/positive_labels).")
        label_rule = (f"arr_delay > {cfg.label_delay_min} min" if cfg.recipe == "flights"
                      else f"{cfg.label_column} in {list(cfg.positive_labels)}")
        manifest = {
            "schema": {f.name: f.dataType.simpleString() for f in all_rows.schema.fields},
            "rows": split_rows,
            "rows_unassigned": unassigned,
            "recipe": cfg.recipe,
            "table": table,
            "label": label_rule,
            "train_label_counts": label_counts,
            "feature_names": spec.feature_names,
            "width": spec.width,
            "fingerprint": fp,
            "split": (cfg.split if cfg.recipe == "flights" else cfg.hash_split).model_dump(mode="json"),
            "feature_spec": _file_entry(out / "feature_spec.json", out / "data"),
            "reference_stats": {**_file_entry(out / "reference_stats.json", out / "data"),
                                "bins": cfg.reference_bins},
        }
        (out / "data" / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        rows.unpersist()

    entry = cached(home, "preprocess", key, build)
    manifest = json.loads((entry.path / "data" / "manifest.json").read_text())
    logger.info("preprocess: rows %s, width %d", manifest["rows"], manifest["width"])
    return PreprocessResult(path=str(entry.path), key=key, rows=manifest["rows"], width=manifest["width"],
                            fingerprint=manifest["fingerprint"], cache_hit=entry.hit)


def load_feature_spec(preprocess_path: str | Path) -> FeatureSpec:
    """The FeatureSpec written by :func:`run_preprocess`."""
    return FeatureSpec.load(Path(preprocess_path) / "feature_spec.json")


def load_split(preprocess_path: str | Path, split: str, columns: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Read one split without Spark: the Spark -> Ray hand-off.

    Returns:
        (X, y): X float64 of shape (n_rows, width), y int64 of shape (n_rows,).
    """
    import pyarrow.parquet as pq

    table = pq.read_table(Path(preprocess_path) / "data" / split, columns=["features", "label", *columns])
    feats = table.column("features").combine_chunks()
    n = len(table)
    flat = np.asarray(feats.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    width = flat.size // n if n else 0
    return flat.reshape(n, width), np.asarray(table.column("label").to_numpy(), dtype=np.int64)
