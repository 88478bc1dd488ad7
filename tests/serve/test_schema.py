"""Request parsing/validation table (no Ray): status, error code and fields[].loc."""

from __future__ import annotations

import pytest

from mlops_ray.serve.schema import ApiError, parse_json_body, validate_feedback, validate_records

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


@pytest.mark.parametrize(("raw", "match"), [
    (b"[" * 50_000 + b"]" * 50_000, "too deeply"),
    (b'{"records": [{"year": ' + b"9" * 5000 + b"}]}", "integer of more than 4300 digits; send numbers of a "),
    (b'\xef\xbb\xbf{"records": []}', "starts with a UTF-8 byte-order mark; send JSON without it"),
    (b'{"records": [{"carrier": "\xff"}]}', "not valid UTF-8"),
])
def test_hostile_bodies_are_400_not_a_crash(raw, match):
    with pytest.raises(ApiError, match=match) as e:
        parse_json_body(raw)
    assert e.value.status == 400 and e.value.code == "bad_json"


@pytest.mark.parametrize(("field", "value", "msg"), [
    ("year", 10**30, "between 1900 and 2200"),
    ("year", 9999, "between 1900 and 2200"),
    ("distance", float("inf"), "expected number"),
    ("time_hour", "9999-01-01T00:00:00+00:00", "year must be between"),
])
def test_values_outside_what_the_features_can_hold_are_422(field, value, msg):
    err = _problems({"records": [{**GOOD, field: value}]})
    assert err.status == 422 and any(f["loc"] == ["records", 0, field] and msg in f["msg"] for f in err.fields)


@pytest.mark.parametrize(("payload", "loc", "msg"), [
    ([], [], "expected an object"),
    ({"label": 1}, ["request_id"], "field required"),
    ({"request_id": "", "label": 1}, ["request_id"], "1 to 128 characters"),
    ({"request_id": 5, "label": 1}, ["request_id"], "string"),
    ({"request_id": "r"}, ["label"], "exactly one of label"),
    ({"request_id": "r", "label": 1, "labels": [1]}, ["label"], "exactly one of label"),
    ({"request_id": "r", "label": 2}, ["label"], "expected 0 or 1"),
    ({"request_id": "r", "label": True}, ["label"], "expected 0 or 1"),
    ({"request_id": "r", "label": 1.0}, ["label"], "expected 0 or 1"),
    ({"request_id": "r", "labels": []}, ["labels"], "non-empty list"),
    ({"request_id": "r", "labels": [0, "1"]}, ["labels", 1], "expected 0 or 1"),
    ({"request_id": "r", "label": 1, "record_index": -1}, ["record_index"], "integer >= 0"),
    ({"request_id": "r", "labels": [1], "record_index": 0}, ["record_index"], "not allowed with labels"),
    ({"request_id": "r", "label": 1, "score": 0.3}, ["score"], "unknown field"),
])
def test_feedback_shape_violations_are_422_with_loc(payload, loc, msg):
    with pytest.raises(ApiError) as e:
        validate_feedback(payload)
    assert e.value.status == 422 and e.value.code == "validation_error"
    assert any(f["loc"] == loc and msg in f["msg"] for f in e.value.fields), e.value.fields


@pytest.mark.parametrize(("payload", "n_records", "expected", "loc"), [
    ({"request_id": "r", "label": 1}, 1, {0: 1}, None),
    ({"request_id": "r", "label": 0, "record_index": 2}, 3, {2: 0}, None),
    ({"request_id": "r", "labels": [1, 0, 1]}, 3, {0: 1, 1: 0, 2: 1}, None),
    ({"request_id": "r", "label": 1}, 2, None, ["record_index"]),
    ({"request_id": "r", "label": 1, "record_index": 3}, 3, None, ["record_index"]),
    ({"request_id": "r", "labels": [1, 0]}, 3, None, ["labels"]),
])
def test_feedback_labels_must_fit_the_logged_request(payload, n_records, expected, loc):
    fb = validate_feedback(payload)
    if expected is not None:
        assert fb.labels_by_index(n_records) == expected
        return
    with pytest.raises(ApiError) as e:
        fb.labels_by_index(n_records)
    assert e.value.status == 422 and [f["loc"] for f in e.value.fields] == [loc]
