"""Request parsing and validation for ``POST /v1/predict`` (../shared/CONTRACTS.md).

Order of checks: content type (415) -> body bytes against ``max_request_bytes`` (413) ->
strict UTF-8, JSON without NaN/Infinity literals or duplicate keys (400) -> shape and
per-record schema with unknown and outcome fields forbidden (422) -> record count (413).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlops_ray.config import OUTCOME_COLUMNS
from mlops_ray.preprocess.derive import INPUT_SCHEMA

UNKNOWN_FIELD_LABEL = "_unknown"


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


def parse_json_body(raw: bytes) -> Any:
    """Strict JSON: UTF-8 only, no NaN/Infinity, no duplicate keys.

    Raises:
        ApiError: 400 ``bad_json`` saying what is wrong.
    """
    if not raw.strip():
        raise ApiError(400, "bad_json", "request body is empty; expected a JSON object {\"records\": [...]}")
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise ApiError(400, "bad_json", f"request body is not valid UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise ApiError(400, "bad_json", f"request body is not valid JSON: {e}") from None


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "integer":
        return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return isinstance(v, str)


def _range_problem(name: str, v: Any) -> str | None:
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
    return None


def validate_records(payload: Any, max_records: int) -> list[dict[str, Any]]:
    """Check the parsed body against the input schema.

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
    for i, rec in enumerate(records):
        clean, found = validate_record(rec, i)
        problems += found
        out.append(clean)
    if problems:
        raise ApiError(422, "validation_error", f"{len(problems)} problem(s) in the records", problems)
    return out


def validate_record(rec: Any, i: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One record against the input schema: (clean record, problems with ``loc`` ["records", i, field])."""
    problems: list[dict[str, Any]] = []
    if not isinstance(rec, dict):
        return {}, [{"loc": ["records", i], "msg": f"expected an object, got {type(rec).__name__}"}]
    clean: dict[str, Any] = {}
    for k in rec:
        if k in OUTCOME_COLUMNS:
            problems.append({"loc": ["records", i, k], "msg": "outcome field: only known after the flight, "
                             "not accepted as input"})
        elif k not in INPUT_SCHEMA:
            problems.append({"loc": ["records", i, k], "msg": "unknown field"})
    for name, (kind, required) in INPUT_SCHEMA.items():
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
        why = _range_problem(name, v)
        if why:
            problems.append({"loc": ["records", i, name], "msg": why})
            continue
        clean[name] = v
    if not problems and not _date_ok(clean):
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
    return [{"name": n, "type": k, "required": r, "nullable": not r,
             **({"known_categories": cats[n]} if n in cats else {})} for n, (k, r) in INPUT_SCHEMA.items()]
