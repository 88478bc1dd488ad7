"""Preprocess on Spark: joins, derived features, a Spark ML encoding pipeline fit on the
training split only, a time-based split, and Parquet outputs with a manifest.

Output folder (``cache/preprocess/<key>/``, ../shared/CONTRACTS.md)::

    data/manifest.json               schema, rows per split, content fingerprint, feature names
    data/{train,validation,test}/    Parquet: input columns, label, features array<double> (fixed width)
    feature_spec.json                Spark-free transform (serving applies it with NumPy)
    reference_stats.json             drift reference from train: per-feature null share, decile edges, top categories
    lookups/{weather,planes}/        lookup tables the serving path joins, as in training
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
from mlops_ray.preprocess.derive import (
    INPUT_SCHEMA,
    spark_flights_with_lookups,
    spark_planes_lookup,
    spark_weather_lookup,
)
from mlops_ray.preprocess.encode import (
    capped_vocabularies,
    feature_spec_from_pipeline,
    fit_encoder,
    with_encoder_inputs,
)
from mlops_ray.preprocess.feature_spec import FeatureSpec

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
OUTPUT_COLUMNS = (*INPUT_SCHEMA, "label", "features")

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


def labelled(flights: "DataFrame", cfg: PreprocessConfig) -> "DataFrame":
    """Add ``label`` (1 when arr_delay > label_delay_min) and ``split`` (by month)."""
    from pyspark.sql import functions as F

    s = cfg.split
    split = (F.when(F.col("month").isin(list(s.train_months)), "train")
             .when(F.col("month").isin(list(s.validation_months)), "validation")
             .when(F.col("month").isin(list(s.test_months)), "test"))
    return (flights.withColumn("label", (F.col("arr_delay") > F.lit(cfg.label_delay_min)).cast("int"))
            .withColumn("split", split))


def spark_features(flights: "DataFrame", weather_lookup: "DataFrame", planes_lookup: "DataFrame",
                   pipeline: "PipelineModel", spec: FeatureSpec) -> "DataFrame":
    """Flights (validated raw columns) -> same rows plus ``features`` array<double> of width ``spec.width``."""
    from pyspark.ml.functions import vector_to_array

    joined = spark_flights_with_lookups(flights, weather_lookup, planes_lookup, spec.timezone)
    vocab = {c.name: c.kept for c in spec.categorical}
    encoded = pipeline.transform(with_encoder_inputs(joined, spec.numeric, vocab))
    return encoded.withColumn("features", vector_to_array("features_vec", dtype="float64"))


def content_fingerprint(df: "DataFrame", spec: FeatureSpec) -> str:
    """SHA-256 over sorted per-row xxhash64 values, the schema, and the spec rounded to 1e-9.

    Independent of partitioning: row hashes are sorted before hashing.
    """
    from pyspark.sql import functions as F

    cols = [c for c in df.columns]
    hashes = sorted(r[0] for r in df.select(F.xxhash64(*cols)).collect())
    h = hashlib.sha256()
    h.update(np.asarray(hashes, dtype=np.int64).tobytes())
    h.update(df.schema.json().encode())
    h.update(spec.rounded_blob())
    return h.hexdigest()


def reference_stats(joined_train: "DataFrame", numeric: tuple[str, ...], categorical: tuple[str, ...],
                    top: int = 20) -> dict:
    """Drift reference on the training rows (pre-encoding features).

    Numeric: row count, null share, mean and decile edges (Spark's approxQuantile, relative
    error 1e-3) of the non-null values. Categorical: null share and the ``top`` most frequent
    values with their shares.
    """
    from pyspark.sql import functions as F

    n = joined_train.count()
    nulls = joined_train.select(*[F.sum(F.col(c).isNull().cast("long")).alias(c) for c in (*numeric, *categorical)]) \
        .collect()[0].asDict()
    means = joined_train.select(*[F.avg(F.col(c).cast("double")).alias(c) for c in numeric]).collect()[0].asDict()
    probs = [i / 10 for i in range(11)]
    edges = joined_train.select(*[F.col(c).cast("double").alias(c) for c in numeric]) \
        .approxQuantile(list(numeric), probs, 1e-3)
    out = {"rows": n, "numeric": {}, "categorical": {}}
    for c, e in zip(numeric, edges):
        out["numeric"][c] = {"null_share": (nulls[c] or 0) / n if n else 0.0, "mean": means[c], "deciles": e}
    for c in categorical:
        rows = (joined_train.groupBy(c).count().orderBy(F.desc("count"), F.asc(c)).limit(top).collect())
        out["categorical"][c] = {"null_share": (nulls[c] or 0) / n if n else 0.0,
                                 "top": [{"value": r[c], "share": r["count"] / n} for r in rows]}
    return out


def run_preprocess(cfg: PreprocessConfig, spark_session: "Callable[[], SparkSession]", ingest_path: str,
                   validate_path: str, validate_key: str, home: Home) -> PreprocessResult:
    """Join, derive, split by month, fit the encoder on train, write features and the manifest.

    ``spark_session`` returns the SparkSession; it is called only when the output is not cached yet.

    Raises:
        DataError: a split has no rows or a single class in train.
    """
    from pyspark.sql import functions as F

    key = cache_key("preprocess", validate_key, cfg.fingerprint(), code_version("preprocess"))

    def build(out: Path) -> None:
        spark = spark_session()
        valid = spark.read.parquet(str(Path(validate_path) / "valid"))
        weather = spark_weather_lookup(spark.read.parquet(str(Path(ingest_path) / "weather")))
        planes = spark_planes_lookup(spark.read.parquet(str(Path(ingest_path) / "planes")))
        weather.write.parquet(str(out / "lookups" / "weather"))
        planes.write.parquet(str(out / "lookups" / "planes"))
        weather = spark.read.parquet(str(out / "lookups" / "weather"))
        planes = spark.read.parquet(str(out / "lookups" / "planes"))

        rows = labelled(valid, cfg)
        unassigned = rows.filter(F.col("split").isNull()).count()
        if unassigned:
            logger.warning("preprocess: %d rows fall in no split month and are left out", unassigned)
        rows = rows.filter(F.col("split").isNotNull()).cache()
        joined = spark_flights_with_lookups(rows.filter(F.col("split") == "train"), weather, planes, cfg.timezone)
        vocab = capped_vocabularies(joined, cfg.categorical_features, cfg.max_categories)
        (out / "reference_stats.json").write_text(json.dumps(
            reference_stats(joined, cfg.numeric_features, cfg.categorical_features), indent=2))
        train_in = with_encoder_inputs(joined, cfg.numeric_features, vocab)
        pipeline = fit_encoder(train_in, cfg.numeric_features, cfg.categorical_features, cfg.impute_strategy)
        pipeline.write().save(str(out / "spark_pipeline"))
        spec = feature_spec_from_pipeline(pipeline, cfg.numeric_features, vocab, cfg.timezone, tuple(INPUT_SCHEMA))
        spec.save(out / "feature_spec.json")

        feats = spark_features(rows, weather, planes, pipeline, spec).select(*OUTPUT_COLUMNS, "split")
        feats.write.partitionBy("split").parquet(str(out / "_by_split"))
        counts = {}
        for s in SPLITS:
            part = spark.read.parquet(str(out / "_by_split" / f"split={s}"))
            part.write.parquet(str(out / "data" / s))
            counts[s] = spark.read.parquet(str(out / "data" / s)).count()
            if counts[s] == 0:
                raise DataError(f"preprocess: split '{s}' has no rows; check preprocess.split months "
                                f"against the data (and ingest.sample_fraction).")
        import shutil

        shutil.rmtree(out / "_by_split")
        all_rows = spark.read.parquet(*[str(out / "data" / s) for s in SPLITS])
        fp = content_fingerprint(all_rows, spec)
        label_counts = {str(r["label"]): r["count"] for r in
                        spark.read.parquet(str(out / "data" / "train")).groupBy("label").count().collect()}
        if len(label_counts) < 2:
            raise DataError(f"preprocess: the train split has a single class {label_counts}; "
                            "expected both delayed and on-time flights.")
        manifest = {
            "schema": {f.name: f.dataType.simpleString() for f in all_rows.schema.fields},
            "rows": counts,
            "rows_unassigned": unassigned,
            "label": f"arr_delay > {cfg.label_delay_min} min",
            "train_label_counts": label_counts,
            "feature_names": spec.feature_names,
            "width": spec.width,
            "fingerprint": fp,
            "split": cfg.split.model_dump(mode="json"),
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
