"""Expectations that cannot apply to the table are refused before any row is read, naming check and column."""

from __future__ import annotations

import pytest

from mlops_ray.errors import DataError
from mlops_ray.validate.expectations import quarantine_plan, tagged
from tests.validate.conftest import validate_config

TABLE_DDL = "id INT, amount DOUBLE, code STRING, n INT, flag BOOLEAN, day DATE, _corrupt_record STRING"


def _schema(ddl: str = TABLE_DDL):
    from pyspark.sql.types import StructType

    return StructType.fromDDL(ddl)


@pytest.mark.parametrize("validate_kw, match", [
    ({"expectations": [{"expect": "not_null", "column": "nope"}]},
     r"column\(s\) absent from the table: 'nope' \(needed by expectation 'not_null:nope'\); got columns \['id', "),
    ({"required_columns": ["id", "ghost"], "expectations": [{"expect": "unique", "columns": ["id", "ghost"]}]},
     r"'ghost' \(needed by validate\.required_columns, expectation 'unique:id,ghost'\)"),
    ({"rule_set": "flights", "required_columns": []},
     r"'year' \(needed by validate\.rule_set 'flights'\); 'month' \(needed by validate\.rule_set 'flights'\)"),
    ({"expectations": [{"expect": "in_range", "column": "code", "min": 0}]},
     r"expectation 'in_range:code' needs a column that compares with \[0\] \(numbers: a numeric column; ISO-8601 "
     r"text: a date or timestamp column\); column 'code' is string\. Declare \{expect: type, column: code"),
    ({"expectations": [{"expect": "in_range", "column": "amount", "max": "2013-12-31"}]},
     r"expectation 'in_range:amount' needs a column that compares with \['2013-12-31'\].*column 'amount' is double"),
    ({"expectations": [{"expect": "in_set", "column": "n", "values": ["1", "2"]}]},
     r"expectation 'in_set:n' needs a column of the kind of its values \(text\); column 'n' is int"),
    ({"expectations": [{"expect": "in_set", "column": "flag", "values": [1]}]},
     r"expectation 'in_set:flag' needs a column of the kind of its values \(number\); column 'flag' is boolean"),
    ({"expectations": [{"expect": "finite", "column": "n"}]},
     r"expectation 'finite:n' needs a float or double column; column 'n' is int"),
    ({"expectations": [{"expect": "freshness", "column": "code", "max_age_hours": 1}]},
     r"expectation 'freshness:code' needs a date or timestamp column; column 'code' is string"),
])
def test_expectations_that_do_not_fit_the_table_are_refused(spark, validate_kw, match):
    cfg = validate_config(**{"rule_set": "none", **validate_kw})
    with pytest.raises(DataError, match=match):
        quarantine_plan(cfg, _schema())


def test_a_quarantine_column_name_in_the_input_is_refused(spark):
    with pytest.raises(DataError, match=r"the table has column\(s\) \['reason'\], which the quarantine adds"):
        quarantine_plan(validate_config(rule_set="none"), _schema("id INT, reason STRING"))


def test_a_cast_spark_does_not_allow_is_refused_naming_it(spark):
    cfg = validate_config(rule_set="none", expectations=[{"expect": "type", "column": "flag", "type": "date"}])
    table = spark.createDataFrame([], _schema())
    with pytest.raises(DataError, match=r"a type expectation asks for a cast Spark cannot do: .*BOOLEAN.*DATE"):
        tagged(table, quarantine_plan(cfg, table.schema))


def test_the_plan_lists_every_reason_in_check_order(spark):
    cfg = validate_config(required_columns=["id"], rule_set="none", expectations=[
        {"expect": "in_set", "column": "code", "values": ["A"]}, {"expect": "type", "column": "n", "type": "bigint"},
        {"expect": "unique", "columns": ["id"]}, {"expect": "row_count", "min_rows": 1}])
    plan = quarantine_plan(cfg, _schema())
    # types first, then every float/double column's finite check, then the rest in config order, unique last
    assert plan.names == ["malformed_line", "missing_id", "type:n", "finite:amount", "in_set:code", "unique:id"]


def test_the_config_reserves_exactly_the_flights_rule_names(spark):
    from mlops_ray.config import FLIGHTS_REASONS
    from mlops_ray.validate.flights import flight_quality_rules, no_outcome_rule

    assert FLIGHTS_REASONS == (*[n for n, _, _ in flight_quality_rules()], no_outcome_rule()[0])
