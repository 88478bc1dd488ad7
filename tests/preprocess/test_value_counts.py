"""Exact statistics, the encoder built from the feature spec, and the drift bins, on small Spark frames."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest

from mlops_ray.errors import DataError
from mlops_ray.preprocess.encode import feature_spec_from_counts, fit_encoder
from mlops_ray.preprocess.reference import bin_index, reference_stats
from mlops_ray.preprocess.value_counts import NumericCounts, spark_value_counts

pytestmark = pytest.mark.timeout(300)


def _frame(spark, pdf: pd.DataFrame, schema: str):
    return spark.createDataFrame(pdf.astype(object).where(pdf.notna(), None), schema=schema)


def _counts(values) -> NumericCounts:
    x = np.asarray(values, dtype=np.float64)
    v, c = np.unique(x[~np.isnan(x)], return_counts=True)
    return NumericCounts("x", v, c.astype(np.int64), int(np.isnan(x).sum()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_mean_and_std_are_exact(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(50, 20, size=rng.integers(2, 3000)), rng.integers(0, 3))  # many ties
    nc = _counts(np.concatenate([x, [np.nan] * 7]))
    n = x.size
    xs = np.sort(x)
    for i in range(11):
        p = Fraction(i, 10)
        assert nc.quantile(p, method="inverted_cdf") == xs[max(-(-n * i // 10), 1) - 1]
        assert nc.quantile(p) == pytest.approx(np.quantile(x, i / 10), rel=1e-13, abs=1e-13)
    assert nc.quantile(Fraction(1, 2)) == pytest.approx(np.median(x), rel=1e-13, abs=1e-13)
    mean, std = nc.mean_std()
    assert (mean, std) == pytest.approx((x.mean(), x.std(ddof=1)), rel=1e-12)
    fill = float(np.median(x))
    imputed = np.concatenate([x, [fill] * 7])
    assert nc.mean_std(fill=fill) == pytest.approx((imputed.mean(), imputed.std(ddof=1)), rel=1e-12)


def test_mean_is_exact_where_a_float_sum_is_not():
    """1e16 + 1 + 1 ... : a float64 running sum loses the ones, the exact sum keeps them."""
    nc = _counts([1e16] + [1.0] * 1000 + [-1e16])
    assert nc.mean_std()[0] == 1000 / 1002
    assert sum([1e16] + [1.0] * 1000 + [-1e16]) / 1002 == 0.0  # what a sequential float64 sum gives


def test_value_counts_of_a_spark_frame(spark):
    pdf = pd.DataFrame({"a": [1.0, 2.0, None, 4.0, np.nan, 2.0, 2.0, 10.0], "m": [3, 1, 2, 2, 5, 6, 7, 8],
                        "c": ["x", "y", "y", None, "__missing__", "z", "x", "w"]})
    df = spark.createDataFrame(pdf).repartition(3)
    vc = spark_value_counts(df, ("a", "m"), ("c",))
    assert vc.rows == 8
    a = vc.numeric["a"]
    assert (a.values.tolist(), a.counts.tolist(), a.nulls) == ([1.0, 2.0, 4.0, 10.0], [1, 3, 1, 1], 2)
    assert vc.numeric["m"].values.tolist() == [1, 2, 3, 5, 6, 7, 8]
    c = vc.categorical["c"]  # frequency order, ties by code point; the __missing__ token is a null
    assert (c.values, c.counts.tolist(), c.nulls) == (("x", "y", "w", "z"), [2, 2, 1, 1], 2)


def test_vocabulary_is_capped_in_frequency_order_with_ties_broken_alphabetically(spark):
    values = ["b"] * 3 + ["d"] * 2 + ["c"] * 2 + ["a"] * 2 + ["e"] + ["__other__"] * 5 + [None] * 4
    df = spark.createDataFrame(pd.DataFrame({"n": np.arange(len(values), dtype=float), "c": values}))
    vc = spark_value_counts(df, ("n",), ("c",))
    spec = feature_spec_from_counts(vc, ("n",), ("c",), 3, "median", "UTC", ())
    assert spec.categorical[0].labels == ("b", "a", "c")  # reserved tokens never enter the vocabulary
    assert spec.width == 1 + 3 + 2


@pytest.mark.parametrize("strategy", ["median", "mean"])
def test_spark_encoder_equals_the_spec_transform_on_nulls_nan_unseen_and_reserved_tokens(spark, strategy):
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    train = pd.DataFrame({"a": [1.0, 2.0, None, 4.0, 2.0, 2.0, 10.0, 7.5], "k": [5.0] * 8,
                          "c": ["x", "y", "y", None, "z", "x", "w", "x"]})
    vc = spark_value_counts(_frame(spark, train, "a double, k double, c string"), ("a", "k"), ("c",))
    spec = feature_spec_from_counts(vc, ("a", "k"), ("c",), 2, strategy, "UTC", ())
    assert spec.impute[0] == (2.0 if strategy == "median" else 28.5 / 7) and spec.std[1] == 0.0
    model = fit_encoder(_frame(spark, train, "a double, k double, c string"), spec)

    scored = pd.DataFrame({"id": range(8), "a": [np.nan, None, -3.25, 1e6, 2.0, 0.0, 4.0, 7.5],
                           "k": [5.0, None, 1.0, 5.0, 2.0, 3.0, 4.0, 5.0],
                           "c": ["x", None, "__missing__", "__other__", "never", "y", "w", ""]})
    sdf = spark.createDataFrame(scored.astype(object).where(scored.notna(), None),
                                schema="id long, a double, k double, c string")
    sdf = sdf.withColumn("a", F.when(sdf.id == 0, float("nan")).otherwise(sdf.a))  # a real NaN in Spark
    out = model.transform(sdf).withColumn("f", vector_to_array("features_vec")).select("id", "f").toPandas()
    X_spark = np.stack(out.sort_values("id")["f"].to_numpy())
    X_spec = spec.transform(scored)
    np.testing.assert_array_equal(X_spark, X_spec)  # bit-identical, not merely close
    labels = spec.categorical[0].labels
    assert labels == ("x", "y")
    slots = X_spec[:, 2:].argmax(axis=1).tolist()
    assert slots == [0, 2, 2, 3, 3, 1, 3, 3]  # x; null, __missing__ -> <missing>; others -> <other>
    assert (X_spec[:, 1] == 0.0).all()  # constant training column (std 0) -> 0.0, as Spark


def test_integer_and_boolean_categoricals_serve_as_spark_indexed_them(spark):
    """Training indexes CAST(column AS STRING): "1", "true". A request whose int column holds a null becomes float
    in pandas (1.0) and Python writes True as "True": serving must still find "1" and "true", in both the
    DataFrame and the per-request column path."""
    from dataclasses import replace

    from pyspark.ml.functions import vector_to_array

    from mlops_ray.preprocess.records import RecordTransformer

    schema = "id long, a double, n int, b boolean"
    train = pd.DataFrame({"id": range(8), "a": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                          "n": [1, 1, 1, 2, 2, 3, None, 1], "b": [True, True, False, True, None, True, False, True]})
    vc = spark_value_counts(_frame(spark, train, schema), ("a",), ("n", "b"))
    spec = replace(feature_spec_from_counts(vc, ("a",), ("n", "b"), 5, "median", "UTC", ("a", "n", "b")),
                   recipe="table", input_schema=(("a", "number", True), ("n", "integer", False),
                                                 ("b", "boolean", False)))
    assert [c.labels for c in spec.categorical] == [("1", "2", "3"), ("true", "false")]
    model = fit_encoder(_frame(spark, train, schema), spec)

    records = [{"a": 2.5, "n": 2, "b": False}, {"a": 1.0, "n": None, "b": True}, {"a": 9.0, "n": 7},
               {"a": 3.0, "n": 3, "b": None}, {"a": 4.0, "n": 1, "b": True}]
    scored = pd.DataFrame.from_records([{"id": i, "n": None, "b": None, **r} for i, r in enumerate(records)],
                                       columns=["id", "a", "n", "b"])
    out = model.transform(_frame(spark, scored, schema)).withColumn("f", vector_to_array("features_vec"))
    X_spark = np.stack(out.select("id", "f").toPandas().sort_values("id")["f"].to_numpy())
    transformer = RecordTransformer(spec)
    assert scored["n"].dtype == np.float64  # the pandas path sees 2.0, not 2
    np.testing.assert_array_equal(transformer.transform(scored[["a", "n", "b"]]), X_spark)
    np.testing.assert_array_equal(transformer.transform(records), X_spark)
    for one, row in zip(records, X_spark):  # one record per request: no null to turn ints into floats
        np.testing.assert_array_equal(transformer.transform([one])[0], row)
    # the check can fail: Python's own text of the values ("2.0", "True") lands in <other>
    assert replace(spec, input_schema=()).transform(scored)[:, 1:].tolist() != X_spark[:, 1:].tolist()


def test_a_numeric_feature_null_in_every_training_row_is_a_data_error(spark):
    df = spark.createDataFrame(pd.DataFrame({"a": [1.0, 2.0], "b": [None, None]}).astype(object),
                               schema="a double, b double")
    vc = spark_value_counts(df, ("a", "b"), ())
    with pytest.raises(DataError, match=r"numeric feature 'b' is null in every training row.*preprocess.numeric_features"):
        feature_spec_from_counts(vc, ("a", "b"), (), 10, "median", "UTC", ())


def test_an_infinite_training_value_is_a_data_error(spark):
    df = spark.createDataFrame(pd.DataFrame({"a": [1.0, float("inf")]}))
    with pytest.raises(DataError, match=r"numeric feature 'a' holds inf in the training split; expected finite"):
        spark_value_counts(df, ("a",), ())


def test_an_empty_training_split_is_a_data_error(spark):
    df = spark.createDataFrame(pd.DataFrame({"a": [1.0]})).limit(0)
    vc = spark_value_counts(df, ("a",), ())
    with pytest.raises(DataError, match=r"the train split has no rows"):
        feature_spec_from_counts(vc, ("a",), (), 10, "median", "UTC", ())


def test_reference_bins_follow_the_documented_convention():
    """Right-closed bins at distinct inverted-CDF quantiles; outer bins open; nulls apart."""
    x = [0.0] * 6 + [1.0, 2.0, 3.0, 4.0] + [np.nan, np.nan]
    nc = _counts(x)
    from mlops_ray.preprocess.value_counts import ValueCounts

    ref = reference_stats(ValueCounts(rows=12, numeric={"x": nc}, categorical={}), {}, bins=4)["numeric"]["x"]
    # quantiles at 0, 1/4, 2/4, 3/4, 1 of the 10 non-null values: ranks 1, 3, 5, 8, 10
    assert ref["quantiles"] == [0.0, 0.0, 0.0, 2.0, 4.0]
    assert ref["edges"] == [0.0, 2.0]                 # tied quantiles merged: 3 bins, not 4
    assert ref["counts"] == [6, 2, 2]                 # (-inf, 0], (0, 2], (2, inf)
    assert (ref["nulls"], ref["rows"], ref["null_share"]) == (2, 12, 2 / 12)
    # serving values: below the minimum -> first bin, on an edge -> the bin it closes, above the max -> last
    assert bin_index(ref["edges"], np.array([-5.0, 0.0, 0.5, 2.0, 2.5, 99.0])).tolist() == [0, 0, 1, 1, 2, 2]
    constant = reference_stats(ValueCounts(rows=3, numeric={"x": _counts([7.0] * 3)}, categorical={}), {}, 10)
    assert (constant["numeric"]["x"]["edges"], constant["numeric"]["x"]["counts"]) == ([7.0], [3, 0])
