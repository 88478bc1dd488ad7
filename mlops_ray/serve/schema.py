"""Request parsing and validation for ``POST /v1/predict`` (../shared/CONTRACTS.md).

Order of checks: content type (415) -> body bytes against ``max_request_bytes`` (413) ->
strict UTF-8, JSON without NaN/Infinity literals or duplicate keys (400) -> shape and
per-record schema with unknown and outcome fields forbidden (422) -> record count (413).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from mlops_ray.config import OUTCOME_COLUMNS
from mlops_ray.preprocess.derive import INPUT_SCHEMA

UNKNOWN_FIELD_LABEL = "_unknown"


_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def number_from_text(v: Any) -> Any:
    """A cell of a numeric input column read as text, as a request body would carry it.

    Text that is a number becomes that number: an ``int`` when it is a whole number (``"2422"``, ``"2422.0"``,
    ``"1e3"``), else a ``float``; empty (or blank) text is None (null); any other text (``"abc"``, ``"inf"``) is
    returned as it came, so validation rejects that row naming the field and the value. Non-text values are
    returned unchanged.
    """
    if not isinstance(v, str):
        return v
    t = v.strip()
    if not t:
        return None
    if not _NUMBER_TEXT.fullmatch(t):
        return v
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    f = float(t)
    if not math.isfinite(f):
        return v
    return int(f) if f.is_integer() else f


def finite_number(v: Any) -> float | None:
    """``v`` (a number, a bool, or text that is a number as :func:`number_from_text` reads it) as a float;
    None when it is no finite number (``"abc"``, ``"inf"``, NaN, blank text, None)."""
    if isinstance(v, bool):
        return float(v)
    x = number_from_text(v)
    try:
        f = float(x) if not isinstance(x, str) else math.nan
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class ApiError(Exception):
    """An error the API answers with ``{"error": {"code", "message", "fields"}}``."""

    status: int
    code: str
    message: str
    fields: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "fields": self.fields}}


def _reject_constant(name: str):
    raise ValueError(f"the literal {name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key '{k}'")
        out[k] = v
    return out


#: What each route's body looks like, as its empty-body error names it.
PREDICT_BODY = 'a JSON object {"records": [...]}'
FEEDBACK_BODY = 'a JSON object {"request_id": ..., "label": 0 or 1} (or "labels": [...])'


def parse_json_body(raw: bytes, expected: str = PREDICT_BODY) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys.

    Args:
        expected: the route's body shape, named when the body is empty.

    Raises:
        ApiError: 400 ``bad_json`` saying what is wrong.
    """
    if not raw.strip():
        raise ApiError(400, "bad_json", f"request body is empty; expected {expected}")
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ApiError(400, "bad_json", f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    if text.startswith("\ufeff"):
        raise ApiError(400, "bad_json", "request body starts with a UTF-8 byte-order mark; send JSON without it")
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        if "int_max_str_digits" in str(e) or "Exceeds the limit" in str(e):  # CPython's guard on huge integers
            raise ApiError(400, "bad_json", "request body holds an integer of more than 4300 digits; send numbers "
                                            "of a realistic size") from None
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "bad_json", "request body nests arrays/objects too deeply; send flat records") from None


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "boolean":
        return isinstance(v, bool)
    return isinstance(v, str)


#: Years accepted in records (and in ``time_hour``): inside pandas' nanosecond timestamp range, which the
#: feature derivation uses.
YEAR_RANGE = (1900, 2200)


def _range_problem(name: str, v: Any) -> str | None:
    if name == "year" and not YEAR_RANGE[0] <= v <= YEAR_RANGE[1]:
        return f"must be between {YEAR_RANGE[0]} and {YEAR_RANGE[1]}"
    if name == "month" and not 1 <= v <= 12:
        return "must be between 1 and 12"
    if name == "day" and not 1 <= v <= 31:
        return "must be between 1 and 31"
    if name in ("sched_dep_time", "sched_arr_time") and not (0 <= v <= 2359 and v % 100 < 60):
        return "must be a local time hhmm between 0 and 2359 with minutes < 60"
    if name == "distance" and not v > 0:
        return "must be > 0 (miles)"
    if name == "time_hour":
        from datetime import datetime

        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            return "must be an ISO-8601 timestamp with an offset, e.g. 2013-11-03T10:00:00-05:00"
        if dt.tzinfo is None:
            return "must carry a UTC offset, e.g. 2013-11-03T10:00:00-05:00"
        if not YEAR_RANGE[0] <= dt.year <= YEAR_RANGE[1]:
            return f"year must be between {YEAR_RANGE[0]} and {YEAR_RANGE[1]}"
    return None


def validate_records(payload: Any, max_records: int, spec=None) -> list[dict[str, Any]]:
    """Check the parsed body against the input schema of ``spec`` (a FeatureSpec; None: the flights schema).

    Returns:
        The records, with integer fields as ``int``.

    Raises:
        ApiError: 422 ``validation_error`` with every bad field's ``loc`` and message;
            413 ``payload_too_large`` when there are more than ``max_records`` records.
    """
    if not isinstance(payload, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object {\"records\": [...]}",
                       [{"loc": [], "msg": f"expected an object, got {type(payload).__name__}"}])
    extra = sorted(set(payload) - {"records"})
    problems: list[dict[str, Any]] = [{"loc": [k], "msg": "unknown field"} for k in extra]
    records = payload.get("records")
    if "records" not in payload:
        problems.append({"loc": ["records"], "msg": "field required"})
    elif not isinstance(records, list):
        problems.append({"loc": ["records"], "msg": f"expected a list of records, got {type(records).__name__}"})
    elif not records:
        problems.append({"loc": ["records"], "msg": "must hold at least 1 record"})
    if problems:
        raise ApiError(422, "validation_error", "request does not match the schema", problems)
    if len(records) > max_records:
        raise ApiError(413, "payload_too_large", f"{len(records)} records in one request; at most {max_records} allowed")
    out = []
    inputs = spec.inputs if spec is not None else INPUT_SCHEMA
    outcomes = spec.outcome_columns if spec is not None and spec.outcome_columns else OUTCOME_COLUMNS
    flights = spec is None or spec.recipe == "flights"
    for i, rec in enumerate(records):
        clean, found = validate_record(rec, i, inputs, outcomes, flights)
        problems += found
        out.append(clean)
    if problems:
        raise ApiError(422, "validation_error", f"{len(problems)} problem(s) in the records", problems)
    return out


def validate_record(rec: Any, i: int, inputs: dict[str, tuple[str, bool]] = INPUT_SCHEMA,
                    outcomes: tuple[str, ...] = OUTCOME_COLUMNS,
                    flights: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One record against the input schema: (clean record, problems with ``loc`` ["records", i, field]).

    ``inputs`` maps field -> (JSON type, required); ``outcomes`` are refused by name; ``flights`` adds the
    flights job's range and calendar-date checks.
    """
    problems: list[dict[str, Any]] = []
    if not isinstance(rec, dict):
        return {}, [{"loc": ["records", i], "msg": f"expected an object, got {type(rec).__name__}"}]
    clean: dict[str, Any] = {}
    for k in rec:
        if k in outcomes:
            problems.append({"loc": ["records", i, k], "msg": "outcome field: only known after the fact "
                             "(it is what the model predicts), not accepted as input"})
        elif k not in inputs:
            problems.append({"loc": ["records", i, k], "msg": "unknown field"})
    for name, (kind, required) in inputs.items():
        if name not in rec or rec[name] is None:
            if required:
                problems.append({"loc": ["records", i, name],
                                 "msg": "field required" if name not in rec else "must not be null"})
            continue
        v = rec[name]
        if not _type_ok(kind, v):
            problems.append({"loc": ["records", i, name], "msg": f"expected {kind}, got {type(v).__name__} {v!r}"[:200]})
            continue
        if kind == "integer":
            v = int(v)
        why = _range_problem(name, v) if flights else None
        if why:
            problems.append({"loc": ["records", i, name], "msg": why})
            continue
        clean[name] = v
    if flights and not problems and not _date_ok(clean):
        problems.append({"loc": ["records", i, "day"],
                         "msg": f"{clean['year']}-{clean['month']:02d}-{clean['day']:02d} is not a calendar date"})
    return clean, problems


def _date_ok(rec: dict[str, Any]) -> bool:
    from datetime import date

    try:
        date(rec["year"], rec["month"], rec["day"])
        return True
    except (KeyError, ValueError):
        return False


def input_schema_description(spec=None) -> list[dict[str, Any]]:
    """The input schema as served by ``GET /v1/model``: name, type, required, nullable, known categories."""
    cats = {c.name: list(c.labels) for c in spec.categorical} if spec is not None else {}
    inputs = spec.inputs if spec is not None else INPUT_SCHEMA
    return [{"name": n, "type": k, "required": r, "nullable": not r,
             **({"known_categories": cats[n]} if n in cats else {})} for n, (k, r) in inputs.items()]


#: Longest request id accepted (an X-Request-ID header, or a feedback's request_id).
MAX_REQUEST_ID_CHARS = 128


def check_request_id_header(value: str | None) -> None:
    """Refuse an ``X-Request-ID`` that could not be the answer's id: Ray Serve's proxy echoes the header as sent,
    so an empty or over-long one would differ from the id in the body and the prediction log.

    Raises:
        ApiError: 422 ``validation_error`` with ``loc ["header", "X-Request-ID"]`` when ``value`` is given but
            empty or longer than :data:`MAX_REQUEST_ID_CHARS` characters (None, no header: fine).
    """
    if value is not None and not 1 <= len(value) <= MAX_REQUEST_ID_CHARS:
        raise ApiError(422, "validation_error",
                       f"X-Request-ID must be 1 to {MAX_REQUEST_ID_CHARS} characters (got {len(value)}); send a "
                       "shorter id, or none and the server makes one",
                       [{"loc": ["header", "X-Request-ID"],
                         "msg": f"a string of 1 to {MAX_REQUEST_ID_CHARS} characters, got {len(value)}"}])


@dataclass(frozen=True)
class Feedback:
    """A validated ``POST /v1/feedback`` body.

    Attributes:
        request_id: the predict answer's ``request_id``.
        labels: true labels in record order (the ``labels`` form), or None.
        label: one true label (the ``label`` form), or None.
        record_index: the record ``label`` is for; None = the request's only record.
    """

    request_id: str
    labels: tuple[int, ...] | None = None
    label: int | None = None
    record_index: int | None = None

    def labels_by_index(self, n_records: int) -> dict[int, int]:
        """``{record_index: label}`` for a request that held ``n_records`` records.

        Raises:
            ApiError: 422 when the labels do not fit the request (wrong count, index out of range,
                a single ``label`` without ``record_index`` for a request of several records).
        """
        if self.labels is not None:
            if len(self.labels) != n_records:
                raise ApiError(422, "validation_error", "labels do not match the request", [
                    {"loc": ["labels"], "msg": f"request {self.request_id!r} held {n_records} record(s); "
                                               f"got {len(self.labels)} label(s); send one label per record, in order"}])
            return dict(enumerate(self.labels))
        if self.record_index is None:
            if n_records != 1:
                raise ApiError(422, "validation_error", "label does not say which record it is for", [
                    {"loc": ["record_index"], "msg": f"request {self.request_id!r} held {n_records} records; send "
                                                     "record_index with label, or labels with one label per record"}])
            return {0: self.label}
        if self.record_index >= n_records:
            raise ApiError(422, "validation_error", "record_index outside the request", [
                {"loc": ["record_index"], "msg": f"request {self.request_id!r} held {n_records} record(s) "
                                                 f"(indices 0..{n_records - 1}); got {self.record_index}"}])
        return {self.record_index: self.label}


def _is_label(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v in (0, 1)


def validate_feedback(payload: Any) -> Feedback:
    """Check a parsed ``POST /v1/feedback`` body: ``{"request_id", "label" (0|1)[, "record_index"]}`` or
    ``{"request_id", "labels": [0|1, ...]}`` (one label per record of the request, in order).

    Raises:
        ApiError: 422 ``validation_error`` with every bad field's ``loc``.
    """
    if not isinstance(payload, dict):
        raise ApiError(422, "validation_error", "body must be a JSON object {\"request_id\": ..., \"label\": 0|1}",
                       [{"loc": [], "msg": f"expected an object, got {type(payload).__name__}"}])
    problems: list[dict[str, Any]] = [{"loc": [k], "msg": "unknown field"}
                                      for k in sorted(set(payload) - {"request_id", "label", "labels", "record_index"})]
    rid = payload.get("request_id")
    if "request_id" not in payload:
        problems.append({"loc": ["request_id"], "msg": "field required"})
    elif not isinstance(rid, str) or not 1 <= len(rid) <= MAX_REQUEST_ID_CHARS:
        problems.append({"loc": ["request_id"], "msg": f"expected the predict answer's request_id, a string of 1 to "
                                                       f"{MAX_REQUEST_ID_CHARS} characters"})
    has_label, has_labels = "label" in payload, "labels" in payload
    if has_label == has_labels:
        problems.append({"loc": ["label"], "msg": "send exactly one of label (0|1, with record_index for a request of "
                                                  "several records) and labels (one 0|1 per record)"})
    if has_label and not _is_label(payload["label"]):
        problems.append({"loc": ["label"], "msg": f"expected 0 or 1, got {payload['label']!r}"[:200]})
    if has_labels:
        labels = payload["labels"]
        if not isinstance(labels, list) or not labels:
            problems.append({"loc": ["labels"], "msg": "expected a non-empty list of 0|1, one per record"})
        else:
            problems += [{"loc": ["labels", i], "msg": f"expected 0 or 1, got {v!r}"[:200]}
                         for i, v in enumerate(labels) if not _is_label(v)]
    idx = payload.get("record_index")
    if "record_index" in payload:
        if has_labels:
            problems.append({"loc": ["record_index"], "msg": "not allowed with labels (labels covers every record)"})
        elif not (isinstance(idx, int) and not isinstance(idx, bool) and idx >= 0):
            problems.append({"loc": ["record_index"], "msg": f"expected an integer >= 0, got {idx!r}"[:200]})
    if problems:
        raise ApiError(422, "validation_error", "feedback does not match the schema", problems)
    if has_labels:
        return Feedback(request_id=rid, labels=tuple(payload["labels"]))
    return Feedback(request_id=rid, label=payload["label"], record_index=idx)
