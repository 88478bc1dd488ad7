"""Request parsing/validation table (no Ray): status, error code and fields[].loc."""

from __future__ import annotations

import pytest

from mlops_ray.serve.schema import ApiError, parse_json_body, validate_records

GOOD = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
        "dest": "SFO", "distance": 2565}


@pytest.mark.parametrize(("raw", "match"), [
    (b"", "empty"),
    (b'{"records": [', "not valid JSON"),
    ('{"records": []}'.encode("utf-16"), "not valid UTF-8"),
    (b'{"records": [{"distance": NaN}]}', "NaN"),
    (b'{"records": [{"distance": Infinity}]}', "Infinity"),
    (b'{"records": [], "records": []}', "duplicate key 'records'"),
])
def test_bad_json_is_400(raw, match):
    with pytest.raises(ApiError, match=match) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and e.value.code == "bad_json"


def _problems(payload, max_records=10):
    with pytest.raises(ApiError) as e:
        validate_records(payload, max_records)
    return e.value


@pytest.mark.parametrize(("payload", "loc", "msg"), [
    ({}, ["records"], "field required"),
    ({"records": []}, ["records"], "at least 1"),
    ({"records": "x"}, ["records"], "expected a list"),
    ({"records": [GOOD], "extra": 1}, ["extra"], "unknown field"),
    ({"records": [{k: v for k, v in GOOD.items() if k != "distance"}]}, ["records", 0, "distance"], "field required"),
    ({"records": [{**GOOD, "distance": "far"}]}, ["records", 0, "distance"], "expected number"),
    ({"records": [{**GOOD, "carrier": 7}]}, ["records", 0, "carrier"], "expected string"),
    ({"records": [{**GOOD, "month": 13}]}, ["records", 0, "month"], "between 1 and 12"),
    ({"records": [{**GOOD, "sched_dep_time": 1261}]}, ["records", 0, "sched_dep_time"], "hhmm"),
    ({"records": [{**GOOD, "year": True}]}, ["records", 0, "year"], "expected integer"),
    ({"records": [{**GOOD, "arr_delay": 30}]}, ["records", 0, "arr_delay"], "outcome field"),
    ({"records": [{**GOOD, "dep_time": 1750}]}, ["records", 0, "dep_time"], "outcome field"),
    ({"records": [{**GOOD, "colour": "red"}]}, ["records", 0, "colour"], "unknown field"),
    ({"records": [{**GOOD, "time_hour": "2013-11-04 17:00"}]}, ["records", 0, "time_hour"], "offset"),
    ({"records": [{**GOOD, "carrier": None}]}, ["records", 0, "carrier"], "must not be null"),
    ({"records": [GOOD, 3]}, ["records", 1], "expected an object"),
])
def test_schema_violations_are_422_with_loc(payload, loc, msg):
    err = _problems(payload)
    assert err.status == 422 and err.code == "validation_error"
    assert any(f["loc"] == loc and msg in f["msg"] for f in err.fields), err.fields


def test_too_many_records_is_413():
    err = _problems({"records": [GOOD] * 11}, max_records=10)
    assert err.status == 413 and err.code == "payload_too_large"


def test_good_record_passes_and_optional_nulls_are_fine():
    recs = validate_records({"records": [GOOD, {**GOOD, "tailnum": None, "sched_arr_time": 2105.0}]}, 10)
    assert recs[0]["distance"] == 2565 and recs[1]["sched_arr_time"] == 2105
    assert isinstance(recs[1]["sched_arr_time"], int)
