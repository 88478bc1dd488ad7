"""The validate config: expectations are closed, typed models; every bad one is refused naming the field."""

from __future__ import annotations

import re

import pytest
import yaml

from mlops_ray.config import config_from_mapping, config_to_yaml, load_config
from mlops_ray.errors import ConfigError
from tests.conftest import REPO
from tests.validate.conftest import validate_config

COL = {"column": "x"}


def test_the_bundled_flights_config_keeps_its_rules_and_declares_expectations():
    cfg = load_config().validate_
    assert cfg.rule_set == "flights" and cfg.max_quarantine_share == 0.10
    assert cfg.required_columns == ("year", "month", "day", "sched_dep_time", "carrier", "origin", "dest", "distance")
    assert [e.key for e in cfg.expectations] == ["in_set:origin", "regex:carrier",
                                                 "unique:year,month,day,carrier,flight,sched_dep_time"]


def test_the_readme_example_is_a_valid_config():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Validation: expectations and quarantine"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = config_from_mapping(yaml.safe_load(block)).validate_
    assert {e.expect for e in cfg.expectations} == {"type", "not_null", "in_range", "in_set", "regex", "finite",
                                                    "unique", "row_count", "freshness"}
    assert cfg.reference() is not None and cfg.rule_set == "none" and cfg.required_columns == ()


def test_defaults_follow_the_rule_set_and_names_default_to_kind_and_column():
    assert validate_config(rule_set="none").required_columns == ()
    assert validate_config(rule_set="none", required_columns=["id"]).required_columns == ("id",)
    cfg = validate_config(expectations=[{"expect": "not_null", **COL}, {"expect": "unique", "columns": ["a", "b"]},
                                        {"expect": "row_count", "min_rows": 1},
                                        {"expect": "in_range", "column": "y", "max": 3, "name": "y_small"}])
    assert [e.key for e in cfg.expectations] == ["not_null:x", "unique:a,b", "row_count", "y_small"]


def test_yaml_dates_and_the_resolved_config_round_trip():
    text = """
validate:
  reference_time: 2014-01-01T00:00:00Z
  expectations:
    - {expect: in_range, column: day, min: 2013-01-01, max: 2013-12-31}
    - {expect: type, column: t, type: timestamp, timezone: America/New_York}
"""
    cfg = config_from_mapping(yaml.safe_load(text))
    v = cfg.validate_
    assert (v.expectations[0].min, v.reference_time) == ("2013-01-01", "2014-01-01T00:00:00+00:00")
    assert config_from_mapping(yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize("validate_kw, match", [
    ({"expectations": [{"expect": "between", **COL}]},
     r"validate\.expectations\.0: Input tag 'between' found using 'expect' does not match"),
    ({"expectations": [{"expect": "not_null", **COL, "colour": "red"}]},
     r"validate\.expectations\.0\.not_null\.colour: unknown key"),
    ({"expectations": [{"expect": "type", **COL, "type": "varchar"}]},
     r"validate\.expectations\.0\.type\.type: Input should be 'boolean', 'int'"),
    ({"expectations": [{"expect": "type", **COL, "type": "int", "timezone": "Europe/Paris"}]},
     r"timezone applies to type 'timestamp' only; got type 'int'"),
    ({"expectations": [{"expect": "type", **COL, "type": "timestamp", "timezone": "Mars/Olympus"}]},
     r"timezone must be an IANA time zone such as 'UTC' or 'America/New_York'; got 'Mars/Olympus'"),
    ({"expectations": [{"expect": "in_range", **COL}]}, r"in_range on 'x' needs min, max or both; got neither"),
    ({"expectations": [{"expect": "in_range", **COL, "min": 5, "max": 1}]},
     r"in_range on 'x': min \(5\) must be <= max \(1\)"),
    ({"expectations": [{"expect": "in_range", **COL, "min": 0, "max": "2013-01-01"}]},
     r"min \(0\) and max \('2013-01-01'\) must both be numbers or both be ISO-8601 dates/timestamps"),
    ({"expectations": [{"expect": "in_range", **COL, "min": "yesterday"}]},
     r"min must be an ISO-8601 date or timestamp such as '2013-01-01'.*got 'yesterday'"),
    ({"expectations": [{"expect": "in_range", **COL, "min": "2013-02-01T00:00:00+01:00",
                        "max": "2013-01-31T22:30:00"}]},
     r"min \('2013-02-01T00:00:00\+01:00'\) must be <= max \('2013-01-31T22:30:00'\)"),
    ({"expectations": [{"expect": "in_set", **COL, "values": []}]},
     r"validate\.expectations\.0\.in_set\.values: Tuple should have at least 1 item"),
    ({"expectations": [{"expect": "in_set", **COL, "values": ["a", 1]}]},
     r"values must be all strings, all numbers or all booleans; got a mix of \['number', 'text'\]"),
    ({"expectations": [{"expect": "regex", **COL, "pattern": "N[0-9"}]},
     r"regex on 'x': pattern 'N\[0-9' does not compile"),
    ({"expectations": [{"expect": "finite", **COL, "clip": "sometimes"}]},
     r"validate\.expectations\.0\.finite\.clip: Input should be a valid boolean"),
    ({"expectations": [{"expect": "not_null", **COL, "max_share": 1.5}]},
     r"validate\.expectations\.0\.not_null\.max_share: Input should be less than or equal to 1"),
    ({"expectations": [{"expect": "unique", "columns": []}]},
     r"validate\.expectations\.0\.unique\.columns: Tuple should have at least 1 item"),
    ({"expectations": [{"expect": "unique", "columns": ["a", "b", "a"]}]},
     r"unique: columns \['a', 'b', 'a'\] name \['a'\] more than once"),
    ({"expectations": [{"expect": "row_count"}]}, r"row_count needs min_rows, max_rows or both; got neither"),
    ({"expectations": [{"expect": "row_count", "min_rows": 10, "max_rows": 5}]},
     r"row_count: min_rows \(10\) must be <= max_rows \(5\)"),
    ({"expectations": [{"expect": "row_count", "min_rows": 1, "max_share": 0.1}]},
     r"validate\.expectations\.0\.row_count\.max_share: unknown key"),
    ({"expectations": [{"expect": "freshness", **COL, "max_age_hours": 0}]},
     r"validate\.expectations\.0\.freshness\.max_age_hours: Input should be greater than 0"),
    ({"expectations": [{"expect": "not_null", **COL, "name": "has x"}]},
     r"validate\.expectations\.0\.not_null\.name: String should match pattern"),
    ({"expectations": [{"expect": "not_null", **COL}, {"expect": "not_null", **COL}]},
     r"the name 'not_null:x' is used twice \(or is a built-in reason\); give one of them another `name`"),
    ({"expectations": [{"expect": "not_null", **COL, "name": "no_outcome"}]},
     r"the name 'no_outcome' is used twice \(or is a built-in reason\)"),
    ({"expectations": [{"expect": "type", **COL, "type": "int"}, {"expect": "type", **COL, "type": "bigint",
                                                                   "name": "again"}]},
     r"column\(s\) \['x'\] have more than one 'type' expectation; keep one"),
    ({"expectations": [{"expect": "row_count", "min_rows": 1}, {"expect": "row_count", "max_rows": 9, "name": "b"}]},
     r"more than one row_count expectation; merge them into one"),
    ({"expectations": [{"expect": "type", **COL, "type": "string"}, {"expect": "finite", **COL}]},
     r"finite on 'x' needs a float or double column; its type expectation says 'string'"),
    ({"expectations": [{"expect": "type", **COL, "type": "int"}, {"expect": "freshness", **COL,
                                                                   "max_age_hours": 1}]},
     r"freshness on 'x' needs a date or timestamp column; its type expectation says 'int'"),
    ({"reference_time": "2014-01-01T00:00:00"},
     r"validate\.reference_time must carry an offset \('Z' or '\+hh:mm'\), so it names one instant"),
    ({"reference_time": "soon"}, r"validate\.reference_time must be an ISO-8601 date or timestamp"),
    ({"rule_set": "trains"}, r"validate\.rule_set: Input should be 'flights' or 'none'"),
])
def test_bad_expectations_are_refused_naming_the_field(validate_kw, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(**validate_kw)
