"""The flights rule set (``validate.rule_set: flights``): checks no declarative expectation can say.

Each rule is ``(reason, column, condition that marks a row bad)``. ``no_outcome`` marks flights
without ``arr_delay`` (cancelled or diverted): their label is undefined, so they are
quarantined but not counted as bad data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import Column

NO_OUTCOME = "no_outcome"

#: Columns the flights rules read.
FLIGHTS_RULE_COLUMNS = ("year", "month", "day", "sched_dep_time", "sched_arr_time", "distance", "arr_delay")


def _hhmm_ok(c: "Column") -> "Column":
    from pyspark.sql import functions as F

    return (c >= 0) & (c <= 2359) & ((c % 100) < 60) & (F.floor(c / 100) < 24)


def flight_quality_rules() -> list[tuple[str, str, "Column"]]:
    """(reason, column, bad) of the flights data-quality rules, in the order they are checked."""
    from pyspark.sql import functions as F

    # make_date fails on an impossible month or year (ANSI mode): build the date only where both are sound
    last_day = F.when(F.col("month").between(1, 12) & F.col("year").between(1, 9999),
                      F.dayofmonth(F.last_day(F.make_date("year", "month", F.lit(1)))))
    return [
        ("month_out_of_range", "month", ~F.col("month").between(1, 12)),
        ("day_out_of_range", "day", ~F.col("day").between(1, 31) | (F.col("day") > last_day)),
        ("sched_dep_time_not_hhmm", "sched_dep_time", ~_hhmm_ok(F.col("sched_dep_time"))),
        ("sched_arr_time_not_hhmm", "sched_arr_time",
         F.col("sched_arr_time").isNotNull() & ~_hhmm_ok(F.col("sched_arr_time"))),
        ("distance_not_positive", "distance", F.col("distance") <= 0),
    ]


def no_outcome_rule() -> tuple[str, str, "Column"]:
    """(reason, column, bad) of flights without an outcome: checked after every data-quality check."""
    from pyspark.sql import functions as F

    return NO_OUTCOME, "arr_delay", F.col("arr_delay").isNull()
