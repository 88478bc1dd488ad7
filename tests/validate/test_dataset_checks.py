"""Dataset level: thresholds, row counts and freshness fail the stage, naming the expectation, figure and limit."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from mlops_ray.errors import DataError
from mlops_ray.validate import dataset_failures
from tests.validate.conftest import ingested_csv, validate, validate_config

pytestmark = pytest.mark.timeout(300)

NOW = dt.datetime(2014, 1, 1, tzinfo=dt.timezone.utc)

#: Ten rows: three carry a code outside the allowed set; the newest stamp is 2013-12-31T00:00Z.
TEN_ROWS = "id,code,stamp\n" + "".join(f"{i},{'ZZ' if i < 3 else 'AA'},2013-12-{21 + i:02d}T00:00:00Z\n"
                                       for i in range(10))


def test_failed_dataset_checks_fail_the_stage_with_every_figure_named(spark, tmp_path):
    path = ingested_csv(spark, tmp_path, TEN_ROWS)
    expectations = [{"expect": "in_set", "column": "code", "values": ["AA"], "max_share": 0.2},
                    {"expect": "type", "column": "stamp", "type": "timestamp"},
                    {"expect": "freshness", "column": "stamp", "max_age_hours": 24},
                    {"expect": "row_count", "min_rows": 11}]
    cfg = validate_config(rule_set="none", max_quarantine_share=0.5, reference_time="2014-01-02T00:00:00Z",
                          expectations=expectations)
    with pytest.raises(DataError) as err:
        validate(spark, tmp_path, path, cfg)
    msg = str(err.value)
    assert msg.startswith("validate failed 3 check(s): ")
    assert "expectation 'row_count': 10 input rows; expected between 11 and any number of (inclusive)" in msg
    assert "expectation 'in_set:code' failed on 3 of 10 rows (30.00%); expected at most max_share=20.00%" in msg
    assert ("expectation 'freshness:stamp': the newest stamp is 2013-12-30T00:00:00+00:00, 72.0 h before the "
            "reference 2014-01-02T00:00:00+00:00; expected at most max_age_hours=24") in msg
    assert "max_quarantine_share" not in msg  # 30% is within the overall 50%


def _stats(**kw) -> dict:
    base = {"rows_in": 100, "rows_valid": 90, "quarantined": {"in_set:code": 6, "no_outcome": 4},
            "failures": {"in_set:code": 6, "no_outcome": 4}, "newest": {}}
    return {**base, **kw}


@pytest.mark.parametrize("validate_kw, stats_kw, message", [
    ({"max_quarantine_share": 0.05}, {},
     r"^6 of 100 rows \(6\.00%\) were quarantined \(by reason: in_set:code 6\); expected at most "
     r"validate\.max_quarantine_share=5\.00%$"),
    ({"expectations": [{"expect": "in_set", "column": "code", "values": ["AA"], "max_share": 0.05}]}, {},
     r"^expectation 'in_set:code' failed on 6 of 100 rows \(6\.00%\); expected at most max_share=5\.00%$"),
    ({"expectations": [{"expect": "row_count", "max_rows": 99}]}, {},
     r"^expectation 'row_count': 100 input rows; expected between 0 and 99 \(inclusive\)$"),
    ({"expectations": [{"expect": "row_count", "min_rows": 95, "rows": "kept", "name": "enough_rows"}]}, {},
     r"^expectation 'enough_rows': 90 kept rows; expected between 95 and any number of \(inclusive\)$"),
    ({"expectations": [{"expect": "freshness", "column": "t", "max_age_hours": 1}]},
     {"newest": {"freshness:t": None}},
     r"^expectation 'freshness:t': column 't' has no kept value to measure freshness by; expected one at most 1 h "
     r"before 2014-01-01T00:00:00\+00:00$"),
    ({"expectations": [{"expect": "freshness", "column": "t", "max_age_hours": 1.5}]},
     {"newest": {"freshness:t": "2013-12-31T22:00:00+00:00"}},
     r"^expectation 'freshness:t': the newest t is 2013-12-31T22:00:00\+00:00, 2\.0 h before the reference "
     r"2014-01-01T00:00:00\+00:00; expected at most max_age_hours=1\.5$"),
    ({"max_quarantine_share": 1.0}, {"rows_valid": 0}, r"^no valid rows out of 100$"),
])
def test_each_dataset_check_names_what_it_saw_and_its_limit(validate_kw, stats_kw, message):
    problems, _ = dataset_failures(validate_config(rule_set="none", **validate_kw), _stats(**stats_kw), NOW)
    assert len(problems) == 1 and re.search(message, problems[0]), problems


def test_checks_within_their_limits_pass_and_no_outcome_is_not_bad_data():
    cfg = validate_config(max_quarantine_share=0.06, expectations=[
        {"expect": "in_set", "column": "code", "values": ["AA"], "max_share": 0.06},
        {"expect": "row_count", "min_rows": 100, "max_rows": 100},
        {"expect": "freshness", "column": "t", "max_age_hours": 2}])
    problems, fresh = dataset_failures(cfg, _stats(newest={"freshness:t": "2013-12-31T22:00:00+00:00"}), NOW)
    assert problems == []  # 6% quality quarantine; the 4 no_outcome rows do not count
    assert fresh == {"freshness:t": {"newest": "2013-12-31T22:00:00+00:00", "reference": NOW.isoformat(),
                                     "age_hours": 2.0}}
