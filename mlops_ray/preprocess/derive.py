"""Feature derivation for the flights job, written twice on purpose: in Spark (training, large
data) and in pandas (serving, one request), with the same semantics. A parity test on real
rows pins them together (tests/preprocess/test_spark_preprocess.py).

Everything here uses only what is known before departure; ``DERIVED_FROM`` records the
raw columns each feature comes from, and no entry may name an outcome column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

#: Weather columns looked up at the origin for the scheduled hour.
WEATHER_COLUMNS = ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib")
#: Plane attributes looked up by tail number (``year`` of the plane renamed ``plane_year``).
PLANE_COLUMNS = ("plane_year", "seats", "engines")

#: feature -> the raw request/source columns it is computed from (no outcome column may appear).
DERIVED_FROM: dict[str, tuple[str, ...]] = {
    "month": ("month",),
    "day_of_week": ("year", "month", "day"),
    "sched_dep_minute_of_day": ("sched_dep_time",),
    "sched_arr_minute_of_day": ("sched_arr_time",),
    "distance": ("distance",),
    "carrier": ("carrier",),
    "origin": ("origin",),
    "dest": ("dest",),
    "route": ("origin", "dest"),
    **{c: ("origin", "time_hour", "year", "month", "day", "sched_dep_time") for c in WEATHER_COLUMNS},
    **{c: ("tailnum",) for c in PLANE_COLUMNS},
}
KNOWN_FEATURES = frozenset(DERIVED_FROM)


# ----------------------------------------------------------------------------- Spark
def spark_flights_with_keys(flights: "DataFrame", timezone: str) -> "DataFrame":
    """Flights plus calendar/route features and the weather key ``weather_hour`` (UTC timestamp).

    ``weather_hour`` is ``time_hour`` when given, else the scheduled departure hour in
    ``timezone`` converted to UTC. Requires ``spark.sql.session.timeZone=UTC``.
    """
    from pyspark.sql import functions as F

    dep_hour = F.floor(F.col("sched_dep_time") / 100).cast("int")
    local_date = F.make_date("year", "month", "day")
    derived_hour = F.to_utc_timestamp(
        F.make_timestamp(F.col("year"), F.col("month"), F.col("day"), dep_hour, F.lit(0), F.lit(0)), timezone
    )
    return (
        flights.withColumn("day_of_week", ((F.dayofweek(local_date) + 5) % 7 + 1).cast("double"))
        .withColumn("sched_dep_minute_of_day",
                    (dep_hour * 60 + F.col("sched_dep_time") % 100).cast("double"))
        .withColumn("sched_arr_minute_of_day",
                    (F.floor(F.col("sched_arr_time") / 100) * 60 + F.col("sched_arr_time") % 100).cast("double"))
        .withColumn("route", F.concat(F.col("origin"), F.lit("-"), F.col("dest")))  # null when either is null
        .withColumn("weather_hour", F.coalesce(F.to_timestamp(F.col("time_hour")), derived_hour))
    )


def spark_weather_lookup(weather: "DataFrame") -> "DataFrame":
    """Weather keyed by (origin, weather_hour), one row per key (duplicates averaged).

    The 2013 weather table has no duplicate key; an average of two values does not depend on their order.
    """
    from pyspark.sql import functions as F

    return (
        weather.withColumn("weather_hour", F.to_timestamp(F.col("time_hour")))
        .groupBy("origin", "weather_hour")
        .agg(*[F.avg(F.col(c).cast("double")).alias(c) for c in WEATHER_COLUMNS])
    )


def spark_planes_lookup(planes: "DataFrame") -> "DataFrame":
    """Plane attributes keyed by tailnum, one row per tail number.

    A tail number listed twice gets the smallest non-null value of each column, so the lookup does not
    depend on row order or partitioning.
    """
    from pyspark.sql import functions as F

    return planes.groupBy("tailnum").agg(
        F.min(F.col("year").cast("double")).alias("plane_year"),
        F.min(F.col("seats").cast("double")).alias("seats"),
        F.min(F.col("engines").cast("double")).alias("engines"),
    )


def spark_flights_with_lookups(flights: "DataFrame", weather_lookup: "DataFrame", planes_lookup: "DataFrame",
                               timezone: str) -> "DataFrame":
    """Flights joined (left) to weather at the origin for the scheduled hour and to planes by tailnum."""
    from pyspark.sql import functions as F

    keyed = spark_flights_with_keys(flights, timezone)
    return (
        keyed.join(F.broadcast(weather_lookup), on=["origin", "weather_hour"], how="left")
        .join(F.broadcast(planes_lookup), on="tailnum", how="left")
    )


# ---------------------------------------------------------------------------- pandas
def pandas_weather_hour(records: pd.DataFrame, timezone: str) -> pd.Series:
    """UTC weather key for each record: ``time_hour`` when given, else scheduled hour in local time."""
    given = pd.to_datetime(records.get("time_hour"), utc=True, errors="coerce", format="ISO8601") \
        if "time_hour" in records else pd.Series(pd.NaT, index=records.index, dtype="datetime64[ns, UTC]")
    local = pd.to_datetime(
        {"year": records["year"], "month": records["month"], "day": records["day"],
         "hour": (records["sched_dep_time"] // 100).astype("int64")},
        errors="coerce",
    )
    derived = local.dt.tz_localize(timezone, ambiguous=True, nonexistent="shift_forward").dt.tz_convert("UTC")
    return given.fillna(derived).dt.floor("h").astype("datetime64[us, UTC]")


def pandas_flights_with_lookups(records: pd.DataFrame, weather_lookup: pd.DataFrame, planes_lookup: pd.DataFrame,
                                timezone: str) -> pd.DataFrame:
    """The pandas twin of :func:`spark_flights_with_lookups` for serving.

    Args:
        records: raw flight records, shape (n, k) with the input-schema columns.
        weather_lookup: columns origin, weather_hour (UTC), WEATHER_COLUMNS.
        planes_lookup: columns tailnum, PLANE_COLUMNS.
        timezone: IANA zone of the scheduled times.

    Returns:
        DataFrame of shape (n, ...) in the input order with every feature in ``KNOWN_FEATURES``.
    """
    out = pd.DataFrame(index=records.index)
    year = records["year"].astype("int64")
    month = records["month"].astype("int64")
    day = records["day"].astype("int64")
    sdt = records["sched_dep_time"].astype("int64")
    dates = pd.to_datetime({"year": year, "month": month, "day": day})
    out["month"] = month.astype("float64")
    out["day_of_week"] = (dates.dt.day_of_week + 1).astype("float64")
    out["sched_dep_minute_of_day"] = ((sdt // 100) * 60 + sdt % 100).astype("float64")
    sat = pd.to_numeric(records["sched_arr_time"], errors="coerce") if "sched_arr_time" in records \
        else pd.Series(np.nan, index=records.index)
    out["sched_arr_minute_of_day"] = (np.floor(sat / 100) * 60 + np.mod(sat, 100)).astype("float64")
    out["distance"] = records["distance"].astype("float64")
    for c in ("carrier", "origin", "dest"):
        out[c] = records[c].astype("object")
    both = records["origin"].notna() & records["dest"].notna()
    out["route"] = (records["origin"].astype(str) + "-" + records["dest"].astype(str)).where(both, None)
    out["weather_hour"] = pandas_weather_hour(records, timezone)
    out["tailnum"] = records["tailnum"].astype("object") if "tailnum" in records else None
    wl = weather_lookup.copy()
    wl["weather_hour"] = pd.to_datetime(wl["weather_hour"], utc=True).astype("datetime64[us, UTC]")
    merged = out.reset_index(names="_pos").merge(wl, on=["origin", "weather_hour"], how="left")
    merged = merged.merge(planes_lookup, on="tailnum", how="left")
    merged = merged.sort_values("_pos").set_index("_pos")
    merged.index = records.index
    return merged


#: The serving input schema (../shared/CONTRACTS.md): name -> (type, required).
INPUT_SCHEMA: dict[str, tuple[str, bool]] = {
    "year": ("integer", True),
    "month": ("integer", True),
    "day": ("integer", True),
    "sched_dep_time": ("integer", True),
    "carrier": ("string", True),
    "origin": ("string", True),
    "dest": ("string", True),
    "distance": ("number", True),
    "sched_arr_time": ("integer", False),
    "flight": ("integer", False),
    "tailnum": ("string", False),
    "time_hour": ("string", False),
}
