"""Row-level checks as Spark expressions, and the table tagged with the first check each row fails.

Every check is ``(name, column, bad, value)``: ``bad`` is a boolean Column that is true where a
row fails, ``value`` the offending value as text. The order (first failing check wins):

1. ``malformed_line``: ingest kept a line or record that did not fit the schema (``_corrupt_record``);
2. ``missing_<column>`` for ``required_columns``;
3. the flights data-quality rules (``rule_set: flights``);
4. ``type`` expectations (a value that does not convert);
5. ``finite`` checks: every float/double column, declared or not (NaN, +-inf, beyond float32);
6. the other row-level expectations, in config order;
7. ``no_outcome`` (``rule_set: flights``);
8. ``unique`` expectations, among the rows everything above kept.

Nulls pass every check but ``not_null``/``missing_<column>``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce
from typing import TYPE_CHECKING, Any

from mlops_ray.config import (FiniteExpectation, FreshnessExpectation, NotNullExpectation, RangeExpectation,
                              RegexExpectation, SetExpectation, TypeExpectation, UniqueExpectation, ValidateConfig)
from mlops_ray.errors import DataError
from mlops_ray.ingest.files import CORRUPT_RECORD, safe_cast
from mlops_ray.validate.flights import FLIGHTS_RULE_COLUMNS, flight_quality_rules, no_outcome_rule

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType, StructType

#: Largest finite float32 (numpy.finfo(numpy.float32).max): models train in float32, beyond it is infinity.
FLOAT32_MAX = 3.4028234663852886e38

MALFORMED = "malformed_line"

#: Columns the quarantine adds: which check, which column, which value (as text).
REASON_COLUMNS = ("reason", "reason_column", "reason_value")

_REASON = "__reason"


@dataclass(frozen=True)
class RowCheck:
    """One row-level check: true in ``bad`` where a row fails; ``value`` is what the quarantine shows."""

    name: str
    column: str | None
    bad: "Column"
    value: "Column"
    max_share: float | None = None


@dataclass(frozen=True)
class QuarantinePlan:
    """How one table is checked and what its kept rows look like.

    Attributes:
        raw_columns: the input columns, in order (``_corrupt_record`` included when present).
        typed: hidden column name -> the column cast by its ``type`` expectation.
        checks: the row checks in order (malformed and unique apart).
        uniques: the unique expectations, checked last.
        kept: output columns of a kept row (cast, clipped), in input order without ``_corrupt_record``.
        clipped: finite check name -> true where a kept value is clipped.
        newest: freshness name -> the timestamp column whose newest kept value is reported.
    """

    raw_columns: tuple[str, ...]
    typed: dict[str, "Column"]
    checks: tuple[RowCheck, ...]
    uniques: tuple[UniqueExpectation, ...]
    kept: tuple["Column", ...]
    clipped: dict[str, "Column"]
    newest: dict[str, "Column"]

    @property
    def names(self) -> list[str]:
        """Every reason this plan can give, in check order."""
        head = [MALFORMED] if CORRUPT_RECORD in self.raw_columns else []
        return head + [c.name for c in self.checks] + [u.key for u in self.uniques]


def spark_type(name: str) -> "DataType":
    """A ``type`` expectation's type name as a Spark DataType."""
    from pyspark.sql import types as T

    return {"boolean": T.BooleanType(), "int": T.IntegerType(), "bigint": T.LongType(), "float": T.FloatType(),
            "double": T.DoubleType(), "string": T.StringType(), "date": T.DateType(),
            "timestamp": T.TimestampType()}[name]


def _col(name: str) -> "Column":
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def _hidden(column: str) -> str:
    return f"__typed__{column}"


def _kind(t: "DataType") -> str:
    from pyspark.sql.types import (BooleanType, DateType, NumericType, StringType, TimestampNTZType,
                                   TimestampType)

    if isinstance(t, BooleanType):
        return "boolean"
    if isinstance(t, NumericType):
        return "number"
    if isinstance(t, (DateType, TimestampType, TimestampNTZType)):
        return "datetime"
    return "text" if isinstance(t, StringType) else t.simpleString()


def _value_kind(v: Any) -> str:
    return "boolean" if isinstance(v, bool) else "text" if isinstance(v, str) else "number"


def _inapplicable(e: Any, column: str, t: "DataType", needs: str) -> DataError:
    return DataError(f"validate: expectation '{e.key}' needs {needs}; column '{column}' is "
                     f"{t.simpleString()}. Declare {{expect: type, column: {column}, type: ...}} to cast it, or fix "
                     f"the expectation.")


def _utc_instant(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _missing_columns(cfg: ValidateConfig, columns: list[str]) -> None:
    """Raise DataError naming each check whose column the table lacks."""
    wanted: dict[str, list[str]] = {}
    for c in cfg.required_columns:
        wanted.setdefault(c, []).append("validate.required_columns")
    if cfg.rule_set == "flights":
        for c in FLIGHTS_RULE_COLUMNS:
            wanted.setdefault(c, []).append("validate.rule_set 'flights'")
    for e in cfg.expectations:
        for c in getattr(e, "columns", ()) or ([e.column] if hasattr(e, "column") else []):
            wanted.setdefault(c, []).append(f"expectation '{e.key}'")
    missing = {c: who for c, who in wanted.items() if c not in columns}
    if missing:
        named = "; ".join(f"'{c}' (needed by {', '.join(who)})" for c, who in missing.items())
        raise DataError(f"validate: column(s) absent from the table: {named}; got columns {columns}. Fix ingest or "
                        f"the validate config.")
    clash = [c for c in REASON_COLUMNS if c in columns]
    if clash:
        raise DataError(f"validate: the table has column(s) {clash}, which the quarantine adds; rename them at "
                        f"ingest.")


def quarantine_plan(cfg: ValidateConfig, schema: "StructType") -> QuarantinePlan:
    """The checks of ``cfg`` for a table of ``schema``, as Spark expressions.

    Raises:
        DataError: a column a check needs is absent, or an expectation does not fit its column's type
            (e.g. in_range with number bounds on a string column).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType, FloatType, StringType, TimestampType

    raw = list(schema.names)
    _missing_columns(cfg, raw)
    types = {e.column: e for e in cfg.expectations if isinstance(e, TypeExpectation)}
    typed: dict[str, Column] = {}
    dtype: dict[str, DataType] = {f.name: f.dataType for f in schema.fields}
    checks: list[RowCheck] = []

    def value(c: str) -> "Column":
        return _col(_hidden(c)) if c in typed else _col(c)

    checks += [RowCheck(f"missing_{c}", c, _col(c).isNull(), F.lit(None).cast("string")) for c in cfg.required_columns]
    if cfg.rule_set == "flights":
        checks += [RowCheck(n, c, bad, _col(c).cast("string")) for n, c, bad in flight_quality_rules()]
    for c, e in types.items():  # 4. types
        target = spark_type("double" if e.type == "float" else e.type)
        cast, lost = safe_cast(_col(c), dtype[c], target, e.timezone)
        typed[c] = cast
        dtype[c] = target
        checks.append(RowCheck(e.key, c, lost, _col(c).cast("string"), e.max_share))
    finite = {e.column: e for e in cfg.expectations if isinstance(e, FiniteExpectation)}
    clipped: dict[str, Column] = {}
    clip_exprs: dict[str, Column] = {}
    for c in raw:  # 5. finite, declared or implicit
        if not isinstance(dtype[c], (FloatType, DoubleType)):
            if c in finite:
                raise _inapplicable(finite[c], c, dtype[c], "a float or double column")
            continue
        e = finite.get(c) or FiniteExpectation(expect="finite", column=c)
        v = value(c)
        nonfinite = F.isnan(v) | (F.abs(v) == F.lit(float("inf")))
        beyond = ~nonfinite & (F.abs(v) > F.lit(FLOAT32_MAX))
        checks.append(RowCheck(e.key, c, nonfinite | beyond if not e.clip else nonfinite, v.cast("string"),
                               e.max_share))
        if e.clip:
            clipped[e.key] = beyond
            clip_exprs[c] = F.when(beyond, F.signum(v) * F.lit(FLOAT32_MAX)).otherwise(v)
    newest: dict[str, Column] = {}
    for e in cfg.expectations:  # 6. the rest, in config order
        if isinstance(e, (TypeExpectation, FiniteExpectation, UniqueExpectation)) or not hasattr(e, "column"):
            continue
        c = e.column
        v, t = value(c), dtype[c]
        if isinstance(e, NotNullExpectation):
            checks.append(RowCheck(e.key, c, _col(c).isNull(), F.lit(None).cast("string"), e.max_share))
        elif isinstance(e, RangeExpectation):
            bounds = [b for b in (e.min, e.max) if b is not None]
            if _kind(t) == "number" and all(_value_kind(b) == "number" for b in bounds):
                lo, hi, x = e.min, e.max, v
            elif _kind(t) == "datetime" and all(isinstance(b, str) for b in bounds):
                lo, hi = (None if b is None else F.lit(_utc_instant(b)) for b in (e.min, e.max))
                x = v.cast("timestamp")
            else:
                raise _inapplicable(e, c, t, f"a column that compares with {bounds!r} (numbers: a numeric column; "
                                             f"ISO-8601 text: a date or timestamp column)")
            outside = (x < lo if lo is not None else F.lit(False)) | (x > hi if hi is not None else F.lit(False))
            checks.append(RowCheck(e.key, c, x.isNotNull() & outside, v.cast("string"), e.max_share))
        elif isinstance(e, SetExpectation):
            kinds = {_value_kind(x) for x in e.values}
            if {_kind(t)} != kinds:
                raise _inapplicable(e, c, t, f"a column of the kind of its values ({kinds.pop()})")
            checks.append(RowCheck(e.key, c, v.isNotNull() & ~v.isin(list(e.values)), v.cast("string"), e.max_share))
        elif isinstance(e, RegexExpectation):
            text = v if isinstance(t, StringType) else v.cast("string")
            checks.append(RowCheck(e.key, c, text.isNotNull() & ~text.rlike(e.pattern), text, e.max_share))
        elif isinstance(e, FreshnessExpectation):
            if _kind(t) != "datetime":
                raise _inapplicable(e, c, t, "a date or timestamp column")
            newest[e.key] = v.cast(TimestampType())
    if cfg.rule_set == "flights":  # 7.
        name, c, bad = no_outcome_rule()
        checks.append(RowCheck(name, c, bad, F.lit(None).cast("string")))

    kept = []
    for c in raw:
        if c == CORRUPT_RECORD:
            continue
        out = clip_exprs.get(c, value(c))
        if c in types and types[c].type == "float":
            out = out.cast("float")
        kept.append(out.alias(c))
    uniques = tuple(e for e in cfg.expectations if isinstance(e, UniqueExpectation))
    return QuarantinePlan(tuple(raw), typed, tuple(checks), uniques, tuple(kept), clipped, newest)


def _reason(name: str, column: str | None, value: "Column") -> "Column":
    from pyspark.sql import functions as F

    return F.struct(F.lit(name).alias("name"), F.lit(column).cast("string").alias("column"),
                    value.cast("string").alias("value"))


def malformed(plan: QuarantinePlan) -> "Column":
    """True where ingest kept a line that did not fit the schema."""
    from pyspark.sql import functions as F

    return _col(CORRUPT_RECORD).isNotNull() if CORRUPT_RECORD in plan.raw_columns else F.lit(False)


def tagged(df: "DataFrame", plan: QuarantinePlan) -> "DataFrame":
    """``df`` plus the hidden typed columns and ``__reason`` (struct name/column/value; null for a kept row).

    Raises:
        DataError: a ``type`` expectation asks for a cast Spark does not allow (e.g. boolean to date).
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    try:
        out = df.select(*[_col(c) for c in plan.raw_columns], *[e.alias(_hidden(c)) for c, e in plan.typed.items()])
    except AnalysisException as exc:
        raise DataError(f"validate: a type expectation asks for a cast Spark cannot do: "
                        f"{str(exc).splitlines()[0]}. Fix validate.expectations.") from None
    reason = F.when(malformed(plan), _reason(MALFORMED, None, _col(CORRUPT_RECORD))) \
        if CORRUPT_RECORD in plan.raw_columns else None
    for chk in plan.checks:
        branch = _reason(chk.name, chk.column, chk.value)
        reason = F.when(chk.bad, branch) if reason is None else reason.when(chk.bad, branch)
    empty = F.lit(None).cast("struct<name:string,column:string,value:string>")
    out = out.withColumn(_REASON, reason.otherwise(empty) if reason is not None else empty)
    for u in plan.uniques:
        keys = [_col(_hidden(c)) if c in plan.typed else _col(c) for c in u.columns]
        candidate = F.col(_REASON).isNull() & reduce(lambda a, b: a & b, [k.isNotNull() for k in keys])
        copies = F.sum(F.when(candidate, 1).otherwise(0)).over(Window.partitionBy(*keys))
        key_text = F.to_json(F.struct(*[k.alias(c) for k, c in zip(keys, u.columns)]))
        out = out.withColumn(_REASON, F.when(candidate & (copies > 1), _reason(u.key, ",".join(u.columns), key_text))
                             .otherwise(F.col(_REASON)))
    return out


def kept_rows(tagged_df: "DataFrame", plan: QuarantinePlan) -> "DataFrame":
    """Rows no check failed, cast and clipped, without ``_corrupt_record``."""
    from pyspark.sql import functions as F

    return tagged_df.filter(F.col(_REASON).isNull()).select(*plan.kept)


def quarantined_rows(tagged_df: "DataFrame", plan: QuarantinePlan) -> "DataFrame":
    """Rows a check failed, as they came in, plus ``reason``, ``reason_column`` and ``reason_value``."""
    from pyspark.sql import functions as F

    return tagged_df.filter(F.col(_REASON).isNotNull()).select(
        *[_col(c) for c in plan.raw_columns], F.col(f"{_REASON}.name").alias("reason"),
        F.col(f"{_REASON}.column").alias("reason_column"), F.col(f"{_REASON}.value").alias("reason_value"))


def row_statistics(tagged_df: "DataFrame", plan: QuarantinePlan) -> dict[str, Any]:
    """One pass over the tagged table.

    Returns:
        ``rows_in``; ``first_reasons`` (rows per reason, each row under the first check it fails);
        ``failures`` (rows failing each check, counted for every check it fails; malformed lines are
        not checked); ``clipped`` (kept values clipped per finite check); ``non_null`` (per input
        column); ``newest`` (per freshness check, the newest kept value as a UTC instant or None).
    """
    from pyspark.sql import functions as F

    bad_line = malformed(plan)
    kept = F.col(_REASON).isNull()
    name = F.col(f"{_REASON}.name")
    aggs = [F.count(F.lit(1)).alias("rows_in")]
    aggs += [F.sum(F.when(name == n, 1).otherwise(0)).alias(f"first_{i}") for i, n in enumerate(plan.names)]
    aggs += [F.sum(F.when(~bad_line & chk.bad, 1).otherwise(0)).alias(f"fail_{i}") for i, chk in enumerate(plan.checks)]
    aggs += [F.sum(F.when(kept & flag, 1).otherwise(0)).alias(f"clip_{i}")
             for i, flag in enumerate(plan.clipped.values())]
    aggs += [F.count(_col(c)).alias(f"nn_{i}") for i, c in enumerate(plan.raw_columns)]
    aggs += [F.max(F.when(kept, F.unix_micros(ts))).alias(f"new_{i}") for i, ts in enumerate(plan.newest.values())]
    row = tagged_df.agg(*aggs).first()
    first = {n: int(row[f"first_{i}"] or 0) for i, n in enumerate(plan.names)}
    failures = {chk.name: int(row[f"fail_{i}"] or 0) for i, chk in enumerate(plan.checks)}
    failures.update({u.key: first[u.key] for u in plan.uniques})
    if MALFORMED in first:
        failures = {MALFORMED: first[MALFORMED], **failures}

    def instant(micros: int | None) -> str | None:  # from epoch micros: Python's datetimes would be local time
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return None if micros is None else (epoch + dt.timedelta(microseconds=int(micros))).isoformat()

    return {
        "rows_in": int(row["rows_in"]),
        "first_reasons": first,
        "failures": failures,
        "clipped": {k: int(row[f"clip_{i}"] or 0) for i, k in enumerate(plan.clipped)},
        "non_null": {c: int(row[f"nn_{i}"]) for i, c in enumerate(plan.raw_columns)},
        "newest": {k: instant(row[f"new_{i}"]) for i, k in enumerate(plan.newest)},
    }
