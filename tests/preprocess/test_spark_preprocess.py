"""Spark preprocessing on the sample: train/serve parity (with planted nulls and unseen categories),
statistics that do not depend on partitioning, the drift reference, and the no-leakage guarantee."""

from __future__ import annotations

import json
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


# ------------------------------------------------------------------------ parity with planted values
#: bucket (xxhash64 of the flight key, mod 20) -> what is planted in it; buckets 10-19 stay as they are.
PLANTS = {0: ("carrier", "'ZZ'"), 1: ("origin", "'XXX'"), 2: ("dest", "'QQQ'"), 3: ("tailnum", "'N0NE0'"),
          4: ("sched_arr_time", "NULL"), 5: ("distance", "NULL"), 6: ("carrier", "NULL"), 7: ("time_hour", "NULL"),
          8: ("tailnum", "NULL"), 9: ("carrier", "'__other__'")}
FLIGHT_KEY = ["year", "month", "day", "carrier", "flight", "sched_dep_time", "origin", "dest"]


def _artifacts(spark, pre_path: str):
    from pyspark.ml import PipelineModel

    path = Path(pre_path)
    return (load_feature_spec(path), PipelineModel.load(str(path / "spark_pipeline")),
            spark.read.parquet(str(path / "lookups" / "weather")), spark.read.parquet(str(path / "lookups" / "planes")))


@pytest.fixture(scope="module")
def planted(spark, pipeline_run):
    """Real validated rows of months 10-12 (never used to fit) with planted unseen values and nulls.

    Returns (raw rows as pandas with a ``_row`` id, Spark features as an array (n, width) in ``_row`` order).
    """
    from pyspark.sql import functions as F

    _, _, record = pipeline_run
    spec, pipeline, weather, planes = _artifacts(spark, record["stages"]["preprocess"]["outputs"]["path"])
    val = record["stages"]["validate"]["outputs"]
    rows = (spark.read.parquet(str(Path(val["path"]) / "valid")).filter(F.col("month") >= 10)
            .withColumn("_row", F.xxhash64(*FLIGHT_KEY)).withColumn("_bucket", F.pmod(F.col("_row"), F.lit(20))))
    for bucket, (column, value) in PLANTS.items():
        typ = dict(rows.dtypes)[column]
        rows = rows.withColumn(column, F.when(F.col("_bucket") == bucket, F.expr(f"CAST({value} AS {typ})"))
                               .otherwise(F.col(column)))
    rows = rows.cache()
    raw = rows.select("_row", "_bucket", *INPUT_SCHEMA).toPandas().sort_values("_row").reset_index(drop=True)
    feats = spark_features(rows, weather, planes, pipeline, spec).select("_row", "features").toPandas()
    feats = feats.sort_values("_row").reset_index(drop=True)
    rows.unpersist()
    assert raw["_row"].is_unique and raw["_row"].tolist() == feats["_row"].tolist()
    return raw, np.stack(feats["features"].to_numpy())


def test_spec_transform_equals_spark_transform_on_real_rows_with_planted_nulls_and_unseen_categories(
        planted, pipeline_run):
    raw, X_spark = planted
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    served = RecordTransformer.from_dir(pre["path"])
    spec = served.spec
    X_spec = served.transform(raw[list(INPUT_SCHEMA)])
    assert len(raw) >= 1000 and X_spark.shape == X_spec.shape == (len(raw), pre["width"])
    np.testing.assert_allclose(X_spec, X_spark, rtol=0, atol=1e-9)

    # the plants really reached the reserved slots and the imputation (the comparison is not vacuous)
    names = spec.feature_names
    derived = served.derived(raw[list(INPUT_SCHEMA)])
    for bucket, (column, _) in PLANTS.items():
        assert (raw["_bucket"] == bucket).sum() >= 30, f"too few rows planted with {column}"
    carrier_other, carrier_missing = names.index("carrier=<other>"), names.index("carrier=<missing>")
    assert (X_spark[raw["_bucket"].isin([0, 9]), carrier_other] == 1).all()      # 'ZZ', '__other__' -> <other>
    assert (X_spark[raw["_bucket"] == 6, carrier_missing] == 1).all()            # null -> <missing>
    for f in ("origin", "dest", "route"):
        assert (X_spark[raw["_bucket"] == (1 if f == "origin" else 2), names.index(f"{f}=<other>")] == 1).all()
    j = spec.numeric.index("distance")
    imputed = (spec.impute[j] - spec.mean[j]) / spec.std[j]
    assert (X_spark[raw["_bucket"] == 5, j] == imputed).all()
    # unseen origin / tail number: the lookups find nothing, so weather and plane features are imputed
    for f, bucket in (("temp", 1), ("seats", 3), ("seats", 8), ("sched_arr_minute_of_day", 4)):
        assert derived.loc[raw["_bucket"] == bucket, f].isna().all()
        k = spec.numeric.index(f)
        assert (X_spark[raw["_bucket"] == bucket, k] == (spec.impute[k] - spec.mean[k]) / spec.std[k]).all()
    # every categorical block holds exactly one 1: width fixed at fit time, each row in one slot
    col = len(spec.numeric)
    for c in spec.categorical:
        block = X_spark[:, col:col + c.width]
        assert ((block == 0) | (block == 1)).all() and (block.sum(axis=1) == 1).all()
        col += c.width
    assert col == spec.width == pre["width"]


def test_parity_check_catches_a_planted_spec_fault(planted, pipeline_run):
    """A spec whose imputation value differs by 1e-6 breaks parity, and only on rows with a null."""
    import dataclasses

    raw, X_spark = planted
    served = RecordTransformer.from_dir(pipeline_run[2]["stages"]["preprocess"]["outputs"]["path"])
    j = served.spec.numeric.index("distance")
    impute = list(served.spec.impute)
    impute[j] += 1e-6 * served.spec.std[j]
    served.spec = dataclasses.replace(served.spec, impute=tuple(impute))
    diff = np.abs(served.transform(raw[list(INPUT_SCHEMA)]) - X_spark).max(axis=1)
    assert (diff[raw["_bucket"] == 5] > 5e-7).all() and (diff[raw["_bucket"] != 5] <= 1e-9).all()


# --------------------------------------------------------------- statistics independent of partitioning
def _train_rows(spark, record):
    """The training split's derived (pre-encoding) features, rebuilt from the written Parquet; and the spec."""
    from mlops_ray.preprocess.derive import spark_flights_with_lookups

    pre = record["stages"]["preprocess"]["outputs"]
    spec, _, weather, planes = _artifacts(spark, pre["path"])
    train = spark.read.parquet(str(Path(pre["path"]) / "data" / "train")).select(*INPUT_SCHEMA)
    return spark_flights_with_lookups(train, weather, planes, spec.timezone), spec


def test_fitted_statistics_are_identical_on_any_partitioning(spark, pipeline_run):
    """Same training rows, 1 partition vs 7 shuffled ones: the same value counts, bit-identical spec and reference.

    Planted contrast: Spark's own order-dependent aggregates (double ``avg``) and approximate quantiles
    over the same two partitionings are not bit-identical, so the partitionings really differ.
    """
    from pyspark.sql import functions as F

    from mlops_ray.preprocess.encode import feature_spec_from_counts
    from mlops_ray.preprocess.reference import reference_stats
    from mlops_ray.preprocess.value_counts import spark_value_counts

    cfg, _, record = pipeline_run
    joined, written = _train_rows(spark, record)
    p = cfg.preprocess
    one = joined.repartition(1).cache()
    many = joined.repartition(7, F.rand(seed=3)).sortWithinPartitions(F.rand(seed=4)).cache()
    assert (one.rdd.getNumPartitions(), many.rdd.getNumPartitions()) == (1, 7)

    specs, refs = [], []
    for df in (one, many):
        counts = spark_value_counts(df, p.numeric_features, p.categorical_features)
        spec = feature_spec_from_counts(counts, p.numeric_features, p.categorical_features, p.max_categories,
                                        p.impute_strategy, p.timezone, written.input_columns, recipe=written.recipe,
                                        input_schema=written.input_schema, outcome_columns=written.outcome_columns)
        specs.append(spec)
        refs.append(reference_stats(counts, {c.name: c.labels for c in spec.categorical}, p.reference_bins))
    assert specs[0] == specs[1] == written  # exact equality, and equal to what preprocess wrote
    assert json.dumps(refs[0], sort_keys=True) == json.dumps(refs[1], sort_keys=True)

    means = [df.select(*[F.avg(F.col(c).cast("double")).alias(c) for c in p.numeric_features]).collect()[0]
             for df in (one, many)]
    approx = [df.approxQuantile(list(p.numeric_features), [0.25, 0.5, 0.75], 0.05) for df in (one, many)]
    assert means[0] != means[1] or approx[0] != approx[1], "the two partitionings did not change any Spark aggregate"
    one.unpersist()
    many.unpersist()


def test_content_fingerprint_ignores_partitioning_and_sees_a_one_bit_change(spark, pipeline_run):
    from pyspark.sql import functions as F

    from mlops_ray.preprocess import content_fingerprint

    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    spec = load_feature_spec(pre["path"])
    rows = spark.read.parquet(*[str(Path(pre["path"]) / "data" / s) for s in ("train", "validation", "test")])
    assert content_fingerprint(rows.repartition(5, F.rand(seed=1)), spec) == pre["fingerprint"]
    first = rows.select(F.min("flight")).collect()[0][0]
    nudged = rows.withColumn("features", F.when(
        F.col("flight") == first, F.transform("features", lambda x: x + F.lit(1e-12))).otherwise(F.col("features")))
    assert content_fingerprint(nudged, spec) != pre["fingerprint"]


# ------------------------------------------------------------------------------------ drift reference
def test_drift_reference_matches_numpy_on_the_training_rows_and_the_manifest_names_it(spark, pipeline_run):
    import hashlib

    from mlops_ray.monitor.drift import bin_counts
    from mlops_ray.preprocess.reference import bin_index

    cfg, _, record = pipeline_run
    pre = Path(record["stages"]["preprocess"]["outputs"]["path"])
    manifest = json.loads((pre / "data" / "manifest.json").read_text())
    entry = manifest["reference_stats"]
    ref_file = (pre / "data" / entry["path"]).resolve()
    assert ref_file == pre / "reference_stats.json"
    assert entry["sha256"] == hashlib.sha256(ref_file.read_bytes()).hexdigest()
    assert entry["bins"] == cfg.preprocess.reference_bins == 10
    ref = json.loads(ref_file.read_text())

    joined, spec = _train_rows(spark, record)
    train = joined.select(*spec.numeric, *[c.name for c in spec.categorical]).toPandas()
    assert ref["rows"] == len(train) == manifest["rows"]["train"]
    for name in spec.numeric:
        x = train[name].to_numpy(dtype=np.float64, na_value=np.nan)
        ok = x[~np.isnan(x)]
        r = ref["numeric"][name]
        assert (r["nulls"], r["count"]) == (int(np.isnan(x).sum()), ok.size)
        assert r["null_share"] == pytest.approx(np.isnan(x).mean(), abs=1e-12)
        # inverted-CDF quantile i/10: the value of 1-based rank ceil(n * i / 10) (integer arithmetic, no rounding)
        ranks = [max(-(-ok.size * i // 10), 1) for i in range(11)]
        np.testing.assert_array_equal(r["quantiles"], np.sort(ok)[np.array(ranks) - 1])
        np.testing.assert_array_equal(r["edges"], np.unique(r["quantiles"][1:-1]))
        np.testing.assert_array_equal(r["counts"], np.bincount(bin_index(r["edges"], ok), minlength=len(r["edges"]) + 1))
        np.testing.assert_array_equal(r["counts"], bin_counts(ok, np.asarray(r["edges"])))  # monitor's convention
        assert sum(r["counts"]) + r["nulls"] == r["rows"]
        assert r["median"] == pytest.approx(np.median(ok), rel=1e-12, abs=1e-12)
        assert (r["mean"], r["std"]) == pytest.approx((ok.mean(), ok.std(ddof=1)), rel=1e-9, abs=1e-9)
    binned = [n for n in spec.numeric if len(ref["numeric"][n]["edges"]) >= 5]
    assert len(binned) >= 8, "most features should have several bins"
    # planted: the other closing side (left-closed bins) gives other counts on the real data
    assert any(np.bincount(np.searchsorted(ref["numeric"][n]["edges"], train[n].dropna(), side="right"),
                           minlength=len(ref["numeric"][n]["counts"])).tolist() != ref["numeric"][n]["counts"]
               for n in binned)

    for c in spec.categorical:
        r = ref["categorical"][c.name]
        values = train[c.name]
        freq = values.value_counts()
        assert [e["value"] for e in r["categories"]] == list(c.labels)
        assert [e["count"] for e in r["categories"]] == [int(freq.get(v, 0)) for v in c.labels]
        assert r["nulls"] == int(values.isna().sum())
        assert r["other"] == int(values.notna().sum()) - sum(e["count"] for e in r["categories"])
        # the vocabulary is the most frequent values, ties broken alphabetically
        order = sorted(freq.items(), key=lambda vc: (-vc[1], vc[0]))
        assert list(c.labels) == [v for v, _ in order][:cfg.preprocess.max_categories]


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
