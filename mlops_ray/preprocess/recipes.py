"""Recipes: how the main table's rows become pre-encoding features (``preprocess.recipe``).

- ``flights``: the bundled job. Calendar and route features are derived and weather and plane
  attributes joined from lookup tables (:mod:`.derive`, written twice: Spark and pandas); the
  label is ``arr_delay > label_delay_min``; rows are split by month.
- ``table``: a job defined by config alone. The features are columns of the main table as
  they are; the label is ``label_column`` in ``positive_labels``; rows are split by a seeded
  hash of their content (:func:`hash_split_column`), so a row lands in the same split whatever
  the partitioning or row order. The serving input schema is the feature columns with their
  JSON types (:func:`table_input_schema`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mlops_ray.config import OUTCOME_COLUMNS, PreprocessConfig
from mlops_ray.errors import DataError
from mlops_ray.preprocess.derive import INPUT_SCHEMA, spark_flights_with_lookups

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

    from mlops_ray.preprocess.feature_spec import FeatureSpec

#: Resolution of the hash split: a row's hash is mapped to one of this many equal buckets.
HASH_BUCKETS = 1_000_000


def json_type(dtype: "DataType") -> str:
    """The JSON type a request carries for a Spark column type: integer, number, string or boolean.

    Raises:
        DataError: a type a JSON request cannot carry (arrays, maps, structs, binary, dates).
    """
    from pyspark.sql import types as T

    if isinstance(dtype, (T.ByteType, T.ShortType, T.IntegerType, T.LongType)):
        return "integer"
    if isinstance(dtype, (T.FloatType, T.DoubleType, T.DecimalType)):
        return "number"
    if isinstance(dtype, T.StringType):
        return "string"
    if isinstance(dtype, T.BooleanType):
        return "boolean"
    raise DataError(f"a {dtype.simpleString()} column cannot be a feature of recipe 'table' (requests carry JSON "
                    "numbers, strings and booleans); cast it at ingest (schema_ddl) or derive it upstream.")


def table_input_schema(schema: "StructType", cfg: PreprocessConfig, table: str) -> tuple[tuple[str, str, bool], ...]:
    """Recipe 'table': ``(name, JSON type, required)`` per feature column, numeric then categorical.

    Raises:
        DataError: a feature or the label column is not in the table (naming the columns it has),
            or a numeric feature is not numeric.
    """
    have = {f.name: f.dataType for f in schema.fields}
    missing = [c for c in (*cfg.numeric_features, *cfg.categorical_features, cfg.label_column) if c not in have]
    if missing:
        raise DataError(f"preprocess: column(s) {missing} named in preprocess (features or label_column) are not in "
                        f"table '{table}'; it has {sorted(have)}. Fix the names in the config.")
    out = []
    for name in cfg.numeric_features:
        kind = json_type(have[name])
        if kind not in ("integer", "number", "boolean"):
            raise DataError(f"preprocess: numeric feature {name!r} of table '{table}' is {have[name].simpleString()}; "
                            "expected a number. Declare it a categorical feature, or give the file source a "
                            "schema_ddl (or a type expectation) that makes it numeric.")
        out.append((name, kind, name in cfg.required_inputs))
    for name in cfg.categorical_features:
        out.append((name, json_type(have[name]), name in cfg.required_inputs))
    return tuple(out)


def input_schema(cfg: PreprocessConfig, schema: "StructType", table: str) -> tuple[tuple[str, str, bool], ...]:
    """The serving input schema of either recipe (flights: :data:`.derive.INPUT_SCHEMA`)."""
    if cfg.recipe == "flights":
        return tuple((n, t, r) for n, (t, r) in INPUT_SCHEMA.items())
    return table_input_schema(schema, cfg, table)


def outcome_columns(cfg: PreprocessConfig) -> tuple[str, ...]:
    """Columns a request may not carry: the flights outcomes, or the table's label column."""
    return OUTCOME_COLUMNS if cfg.recipe == "flights" else (str(cfg.label_column),)


def hash_split_column(columns: list[str], cfg: PreprocessConfig) -> "Column":
    """``train``/``validation``/``test`` from a seeded xxhash64 of the row's raw columns (recipe 'table').

    The bucket ``pmod(xxhash64(seed, *columns), HASH_BUCKETS) / HASH_BUCKETS`` is compared with the
    cumulative shares of ``preprocess.hash_split``; it depends on the row's values only.
    """
    from pyspark.sql import functions as F

    s = cfg.hash_split
    u = F.pmod(F.xxhash64(F.lit(s.seed), *[F.col(f"`{c}`") for c in columns]), F.lit(HASH_BUCKETS)) / HASH_BUCKETS
    return (F.when(u < F.lit(s.train), "train")
            .when(u < F.lit(s.train + s.validation), "validation")
            .otherwise("test"))


def labelled(rows: "DataFrame", cfg: PreprocessConfig) -> "DataFrame":
    """Add ``label`` (int 0/1) and ``split`` (train/validation/test; null outside every split month).

    Raises:
        DataError: recipe 'table' and some rows have a null label (validate should have quarantined them).
    """
    from pyspark.sql import functions as F

    if cfg.recipe == "flights":
        s = cfg.split
        split = (F.when(F.col("month").isin(list(s.train_months)), "train")
                 .when(F.col("month").isin(list(s.validation_months)), "validation")
                 .when(F.col("month").isin(list(s.test_months)), "test"))
        return (rows.withColumn("label", (F.col("arr_delay") > F.lit(cfg.label_delay_min)).cast("int"))
                .withColumn("split", split))
    label = F.col(f"`{cfg.label_column}`")
    nulls = rows.filter(label.isNull()).count()
    if nulls:
        raise DataError(f"preprocess: {nulls} row(s) have a null label column {cfg.label_column!r}; their label is "
                        "unknown. Declare `{expect: not_null, column: " + str(cfg.label_column) + "}` in "
                        "validate.expectations so validate quarantines them.")
    positive = [F.lit(v) for v in cfg.positive_labels]
    return (rows.withColumn("label", F.when(label.isin(*positive), 1).otherwise(0).cast("int"))
            .withColumn("split", hash_split_column(list(rows.columns), cfg)))


def spark_derived(spark: "SparkSession", rows: "DataFrame", spec: "FeatureSpec", lookups_dir: str | Path) -> "DataFrame":
    """Rows plus every pre-encoding feature of ``spec``: flights joins its lookups; a table is used as it is."""
    if spec.recipe == "table":
        return rows
    lookups = Path(lookups_dir)
    weather = spark.read.parquet(str(lookups / "weather"))
    planes = spark.read.parquet(str(lookups / "planes"))
    return spark_flights_with_lookups(rows, weather, planes, spec.timezone)
