"""Spark preprocessing on the sample: train/serve parity and the no-leakage guarantee."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlops_ray.config import OUTCOME_COLUMNS
from mlops_ray.preprocess import load_feature_spec, spark_features
from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.preprocess.records import RecordTransformer

pytestmark = pytest.mark.timeout(600)


def test_spark_features_equal_pandas_features_on_real_test_rows(pipeline_run):
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / "test")
    X_spark = np.stack(df["features"].to_numpy())
    X_pandas = RecordTransformer.from_dir(pre["path"]).transform(df[list(INPUT_SCHEMA)])
    assert X_spark.shape == X_pandas.shape == (len(df), pre["width"])
    np.testing.assert_allclose(X_pandas, X_spark, rtol=0, atol=1e-9)


def test_parity_check_catches_a_planted_fault(pipeline_run):
    """The parity comparison is not vacuous: one shifted value breaks it."""
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / "test").head(50)
    X_spark = np.stack(df["features"].to_numpy())
    planted = df[list(INPUT_SCHEMA)].copy()
    planted.loc[planted.index[0], "distance"] += 1
    X_pandas = RecordTransformer.from_dir(pre["path"]).transform(planted)
    assert np.abs(X_pandas - X_spark).max() > 1e-6


def _validated_test_rows(spark, record, n=300):
    from pyspark.sql import functions as F

    val = record["stages"]["validate"]["outputs"]
    return spark.read.parquet(str(Path(val["path"]) / "valid")).filter(F.col("month") >= 11).limit(n)


def test_changing_outcome_columns_changes_no_feature_and_no_probability(spark, pipeline_run):
    from pyspark.ml import PipelineModel
    from pyspark.sql import functions as F

    cfg, home, record = pipeline_run
    pre = record["stages"]["preprocess"]["outputs"]
    spec = load_feature_spec(pre["path"])
    pipeline = PipelineModel.load(str(Path(pre["path"]) / "spark_pipeline"))
    weather = spark.read.parquet(str(Path(pre["path"]) / "lookups" / "weather"))
    planes = spark.read.parquet(str(Path(pre["path"]) / "lookups" / "planes"))

    rows = _validated_test_rows(spark, record).cache()
    changed = (rows.withColumn("dep_time", (F.col("sched_dep_time") + 137) % 2400)
               .withColumn("dep_delay", F.lit(300.0)).withColumn("arr_time", F.lit(5))
               .withColumn("air_time", F.lit(1.0)).withColumn("arr_delay", -F.col("arr_delay") - 60))
    key = ["year", "month", "day", "carrier", "flight", "sched_dep_time", "origin", "dest"]

    def feats(df):
        out = spark_features(df, weather, planes, pipeline, spec).select(*key, "features").toPandas()
        return out.sort_values(key).reset_index(drop=True)

    before, after = feats(rows), feats(changed)
    assert len(before) == len(after) > 100
    differs = sum(not np.array_equal(a, b) for a, b in zip(before["features"], after["features"]))
    assert differs == 0
    # the outcome columns really did change
    diff = rows.select(*OUTCOME_COLUMNS).toPandas().to_numpy() != changed.select(*OUTCOME_COLUMNS).toPandas().to_numpy()
    assert diff.all(axis=1).mean() > 0.9

    from mlops_ray.serve.model import load_served_model

    model = load_served_model(cfg.register_, home, "models:/flights@champion", home.root / "dl-noleak")
    p_before = model.estimator.predict_proba(np.stack(before["features"].to_numpy()))[:, 1]
    p_after = model.estimator.predict_proba(np.stack(after["features"].to_numpy()))[:, 1]
    np.testing.assert_array_equal(p_before, p_after)


def test_feature_spec_has_no_outcome_inputs(pipeline_run):
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    spec = load_feature_spec(pre["path"])
    names = set(spec.numeric) | {c.name for c in spec.categorical} | set(spec.input_columns)
    assert not names & set(OUTCOME_COLUMNS)
