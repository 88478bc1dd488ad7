"""Validate: declared expectations, bad rows quarantined (never dropped), exact row accounting.

Row level (:mod:`.expectations`): every check is a Spark expression, and a row that fails one
goes to ``quarantine/`` with ``reason`` (the check's name), ``reason_column`` and
``reason_value`` (the offending value as text; the raw line for ``malformed_line``). Kept rows
go to ``valid/``, cast to their ``type`` expectations and clipped where a ``finite``
expectation says so. ``rows_in == rows_valid + sum(quarantined.values())`` is checked against
the Parquet actually written.

Dataset level (:func:`dataset_failures`): ``max_quarantine_share`` overall, ``max_share`` per
expectation, ``row_count`` and ``freshness`` fail the stage with a message naming the
expectation, what was observed and the threshold. They are checked after the cache, so a
freshness check measured from "now" is measured on every run.

Flights without ``arr_delay`` were cancelled or diverted: their label is undefined, so they are
quarantined with reason ``no_outcome`` and counted apart from data-quality failures.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import FreshnessExpectation, RowCountExpectation, ValidateConfig
from mlops_ray.errors import DataError
from mlops_ray.home import Home
from mlops_ray.validate.expectations import (FLOAT32_MAX, MALFORMED, QuarantinePlan, kept_rows, quarantine_plan,
                                             quarantined_rows, row_statistics, tagged)
from mlops_ray.validate.flights import NO_OUTCOME

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["FLOAT32_MAX", "MALFORMED", "NO_OUTCOME", "ValidateResult", "dataset_failures", "run_validate"]

logger = logging.getLogger(__name__)

#: The table validate checks by default (the flights job's main table; ``ingest.main_table``).
TABLE = "flights"


@dataclass(frozen=True)
class ValidateResult:
    """Validated rows, quarantine and the row accounting.

    Attributes:
        rows_in: rows ingest delivered; always ``rows_valid + rows_quarantined``.
        quarantined: rows per reason, each row under the first check it failed.
        quarantine_share: quarantined rows (``no_outcome`` excluded) / rows_in, the figure compared with
            ``max_quarantine_share``.
        failures: rows failing each row-level check, a row counted for every check it fails (malformed
            lines are not checked), the figure compared with each ``max_share``.
        clipped: kept values clipped to float32's range, per finite check with ``clip: true``.
        all_null_columns: input columns without a single value.
        freshness: per freshness expectation, the newest kept value, the reference and the age in hours.
    """

    path: str
    key: str
    rows_in: int
    rows_valid: int
    quarantined: dict[str, int]
    cache_hit: bool
    rows_quarantined: int = 0
    quarantine_share: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    all_null_columns: list[str] = field(default_factory=list)
    freshness: dict[str, dict[str, Any]] = field(default_factory=dict)


def _written_counts(spark: "SparkSession", out: Path) -> tuple[int, dict[str, int]]:
    """Rows in ``valid/`` and rows per reason in ``quarantine/``, read back from the Parquet written (one job)."""
    from pyspark.sql import functions as F

    valid = spark.read.parquet(str(out / "valid")).select(F.lit(None).cast("string").alias("reason"))
    both = valid.unionByName(spark.read.parquet(str(out / "quarantine")).select("reason"))
    counts = {r["reason"]: int(r["count"]) for r in both.groupBy("reason").count().collect()}
    return counts.pop(None, 0), counts


def _build(cfg: ValidateConfig, spark: "SparkSession", source: Path, out: Path, table: str = TABLE) -> None:
    """Check the table at ``source``; write ``valid/``, ``quarantine/`` and ``stats.json`` under ``out``."""
    frame = spark.read.parquet(str(source))
    plan: QuarantinePlan = quarantine_plan(cfg, frame.schema)
    rows = tagged(frame, plan).cache()
    try:
        stats = row_statistics(rows, plan)
        if stats["rows_in"] == 0:
            raise DataError(f"validate: table '{table}' from {source} has no rows; expected at least one. Check the "
                            f"ingest source of '{table}' (an empty file, query or API answer).")
        kept_rows(rows, plan).write.parquet(str(out / "valid"))
        quarantined_rows(rows, plan).write.parquet(str(out / "quarantine"))
    finally:
        rows.unpersist()
    kept, per_reason = _written_counts(spark, out)
    expected = {k: v for k, v in stats["first_reasons"].items() if v}
    if kept + sum(per_reason.values()) != stats["rows_in"] or per_reason != expected:
        raise DataError(f"validate: row accounting does not add up: {stats['rows_in']} rows in, {kept} written as "
                        f"valid, {per_reason} written to quarantine (counted while checking: {expected}). The input "
                        f"changed while it was read; run validate again.")
    stats.update(rows_valid=kept, quarantined=per_reason)
    (out / "stats.json").write_text(json.dumps(stats, sort_keys=True, indent=1))


def _share(n: int, total: int) -> float:
    return n / total if total else 0.0


def dataset_failures(cfg: ValidateConfig, stats: dict[str, Any], now: dt.datetime) -> tuple[list[str], dict]:
    """The dataset-level checks on a table's statistics (see :func:`.expectations.row_statistics`).

    Args:
        now: the reference instant of freshness checks when ``cfg.reference_time`` is unset (aware).

    Returns:
        (one message per failed check, naming the expectation, what was observed and the threshold;
        freshness figures per freshness expectation).
    """
    rows_in, kept = stats["rows_in"], stats["rows_valid"]
    problems = []
    for e in cfg.expectations:
        if isinstance(e, RowCountExpectation):
            n = rows_in if e.rows == "input" else kept
            if (e.min_rows is not None and n < e.min_rows) or (e.max_rows is not None and n > e.max_rows):
                problems.append(f"expectation '{e.key}': {n} {e.rows} rows; expected between "
                                f"{e.min_rows if e.min_rows is not None else 0} and "
                                f"{e.max_rows if e.max_rows is not None else 'any number of'} (inclusive)")
        share_limit = getattr(e, "max_share", None)
        if share_limit is not None:
            n = stats["failures"].get(e.key, 0)
            if _share(n, rows_in) > share_limit:
                problems.append(f"expectation '{e.key}' failed on {n} of {rows_in} rows ({_share(n, rows_in):.2%}); "
                                f"expected at most max_share={share_limit:.2%}")
    quality = sum(v for k, v in stats["quarantined"].items() if k != NO_OUTCOME)
    if _share(quality, rows_in) > cfg.max_quarantine_share:
        worst = sorted(((v, k) for k, v in stats["quarantined"].items() if k != NO_OUTCOME), reverse=True)
        problems.append(f"{quality} of {rows_in} rows ({_share(quality, rows_in):.2%}) were quarantined (by reason: "
                        f"{', '.join(f'{k} {v}' for v, k in worst)}); expected at most "
                        f"validate.max_quarantine_share={cfg.max_quarantine_share:.2%}")
    reference = cfg.reference() or now
    freshness = {}
    for e in cfg.expectations:
        if not isinstance(e, FreshnessExpectation):
            continue
        newest = stats["newest"].get(e.key)
        if newest is None:
            problems.append(f"expectation '{e.key}': column '{e.column}' has no kept value to measure freshness by; "
                            f"expected one at most {e.max_age_hours:g} h before {reference.isoformat()}")
            freshness[e.key] = {"newest": None, "reference": reference.isoformat(), "age_hours": None}
            continue
        age_h = (reference - dt.datetime.fromisoformat(newest)).total_seconds() / 3600
        freshness[e.key] = {"newest": newest, "reference": reference.isoformat(), "age_hours": round(age_h, 3)}
        if age_h > e.max_age_hours:
            problems.append(f"expectation '{e.key}': the newest {e.column} is {newest}, {age_h:.1f} h before the "
                            f"reference {reference.isoformat()}; expected at most max_age_hours={e.max_age_hours:g}")
    if kept == 0 and rows_in:
        problems.append(f"no valid rows out of {rows_in}")
    return problems, freshness


def run_validate(cfg: ValidateConfig, spark: "Callable[[], SparkSession]", ingest_path: str, ingest_key: str,
                 home: Home, now: dt.datetime | None = None, table: str = TABLE) -> ValidateResult:
    """Split the ingested main table into valid rows and a quarantine with reasons; apply the dataset-level checks.

    Args:
        table: the ingest table to check (``ingest.main_table``).
        spark: returns the SparkSession; called only when the output is not cached yet.
        now: reference instant of freshness checks without ``validate.reference_time`` (default: now, UTC).

    Returns:
        ValidateResult; ``valid/``, ``quarantine/`` and ``stats.json`` are under its ``path``.

    Raises:
        DataError: a column a check needs is absent or of the wrong type; the table has no rows; or a
            dataset-level check failed (quarantined share overall or per expectation, row count, freshness,
            no valid row left); the message names each failed check, the observed value and the threshold.
    """
    key = cache_key("validate", ingest_key, table, cfg.fingerprint(), code_version("validate"))
    source = Path(ingest_path) / table
    entry = cached(home, "validate", key, lambda out: _build(cfg, spark(), source, out, table))
    stats = json.loads((entry.path / "stats.json").read_text())
    all_null = [c for c, n in stats["non_null"].items() if n == 0 and c != "_corrupt_record"]
    if all_null:
        logger.warning("validate: column(s) %s hold no value in any of the %d rows", all_null, stats["rows_in"])
    problems, freshness = dataset_failures(cfg, stats, now or dt.datetime.now(dt.timezone.utc))
    if problems:
        empty = f" All-null column(s): {all_null}." if all_null else ""
        raise DataError(f"validate failed {len(problems)} check(s): " + "; ".join(problems) + f".{empty} Inspect "
                        f"{entry.path / 'quarantine'} (columns reason, reason_column, reason_value).")
    quarantined = dict(sorted(stats["quarantined"].items()))
    quality = sum(v for k, v in quarantined.items() if k != NO_OUTCOME)
    logger.info("validate: %d in, %d valid, quarantined %s", stats["rows_in"], stats["rows_valid"], quarantined)
    return ValidateResult(path=str(entry.path), key=key, rows_in=stats["rows_in"], rows_valid=stats["rows_valid"],
                          quarantined=quarantined, cache_hit=entry.hit, rows_quarantined=sum(quarantined.values()),
                          quarantine_share=round(_share(quality, stats["rows_in"]), 6), failures=stats["failures"],
                          clipped=stats["clipped"], all_null_columns=all_null, freshness=freshness)
