"""Validate: schema checks and row accounting, with bad rows quarantined (never dropped).

Every rule is a Spark expression, so a row gets the reason of the first rule it breaks.
Output: ``valid/`` and ``quarantine/`` (same columns plus ``reason``) as Parquet, and
counts per reason such that ``rows_in == rows_valid + sum(quarantined.values())``.

Flights without ``arr_delay`` were cancelled or diverted: their label is undefined, so
they are quarantined with reason ``no_outcome`` and counted apart from data-quality failures.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import ValidateConfig
from mlops_ray.errors import DataError
from mlops_ray.home import Home

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

NO_OUTCOME = "no_outcome"


@dataclass(frozen=True)
class ValidateResult:
    """Validated rows, quarantine and the row accounting."""

    path: str
    key: str
    rows_in: int
    rows_valid: int
    quarantined: dict[str, int]
    cache_hit: bool


def _hhmm_ok(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    return (c >= 0) & (c <= 2359) & ((c % 100) < 60) & (F.floor(c / 100) < 24)


def flight_rules(required: tuple[str, ...]) -> list[tuple[str, "Column"]]:
    """(reason, condition that marks a row bad), in the order they are checked."""
    from pyspark.sql import functions as F

    rules: list[tuple[str, Column]] = [("malformed_line", F.col("_corrupt_record").isNotNull())]
    rules += [(f"missing_{c}", F.col(c).isNull()) for c in required]
    rules += [
        ("month_out_of_range", ~F.col("month").between(1, 12)),
        ("day_out_of_range", ~F.col("day").between(1, 31)
         | (F.col("day") > F.dayofmonth(F.last_day(F.make_date("year", "month", F.lit(1)))))),
        ("sched_dep_time_not_hhmm", ~_hhmm_ok(F.col("sched_dep_time"))),
        ("sched_arr_time_not_hhmm", F.col("sched_arr_time").isNotNull() & ~_hhmm_ok(F.col("sched_arr_time"))),
        ("distance_not_positive", F.col("distance") <= 0),
        (NO_OUTCOME, F.col("arr_delay").isNull()),
    ]
    return rules


def with_reason(flights: "DataFrame", required: tuple[str, ...]) -> "DataFrame":
    """Flights plus a ``reason`` column: the first broken rule's name, null for a valid row."""
    from pyspark.sql import functions as F

    expr = F.lit(None).cast("string")
    for reason, bad in reversed(flight_rules(required)):
        expr = F.when(bad, F.lit(reason)).otherwise(expr)
    return flights.withColumn("reason", expr)


def run_validate(cfg: ValidateConfig, spark: "Callable[[], SparkSession]", ingest_path: str, ingest_key: str,
                 home: Home) -> ValidateResult:
    """Split ingested flights into valid rows and a quarantine with reasons.

    ``spark`` returns the SparkSession; it is called only when the output is not cached yet.

    Raises:
        DataError: a required column is absent, or the quality-failure share exceeds
            ``max_quarantine_share``, or no valid row remains.
    """
    from pyspark.sql import functions as F

    key = cache_key("validate", ingest_key, cfg.fingerprint(), code_version("validate"))

    def build(out: Path) -> None:
        flights = spark().read.parquet(str(Path(ingest_path) / "flights"))
        missing = [c for c in cfg.required_columns if c not in flights.columns]
        if missing:
            raise DataError(f"validate: required column(s) {missing} are absent from flights; "
                            f"got columns {flights.columns}. Fix ingest or validate.required_columns.")
        tagged = with_reason(flights, cfg.required_columns).cache()
        tagged.filter(F.col("reason").isNull()).drop("reason", "_corrupt_record").write.parquet(str(out / "valid"))
        tagged.filter(F.col("reason").isNotNull()).write.parquet(str(out / "quarantine"))
        counts = {r["reason"] or "valid": r["count"] for r in tagged.groupBy("reason").count().collect()}
        tagged.unpersist()
        (out / "counts.json").write_text(json.dumps(counts, sort_keys=True))

    entry = cached(home, "validate", key, build)
    counts = json.loads((entry.path / "counts.json").read_text())
    rows_valid = int(counts.pop("valid", 0))
    rows_in = rows_valid + sum(counts.values())
    quality = sum(v for k, v in counts.items() if k != NO_OUTCOME)
    share = quality / rows_in if rows_in else 0.0
    if share > cfg.max_quarantine_share:
        raise DataError(f"validate: {quality} of {rows_in} rows ({share:.1%}) failed quality rules {counts}; "
                        f"expected at most validate.max_quarantine_share={cfg.max_quarantine_share:.1%}. "
                        f"Inspect {entry.path / 'quarantine'} (column 'reason').")
    if rows_valid == 0:
        raise DataError(f"validate: no valid rows out of {rows_in}; reasons {counts}.")
    logger.info("validate: %d in, %d valid, quarantined %s", rows_in, rows_valid, counts)
    return ValidateResult(path=str(entry.path), key=key, rows_in=rows_in, rows_valid=rows_valid,
                          quarantined=dict(sorted(counts.items())), cache_hit=entry.hit)
