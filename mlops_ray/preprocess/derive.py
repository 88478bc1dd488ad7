"""Feature derivation for the flights job, written twice on purpose: in Spark (training, large
data) and in pandas (serving, one request), with the same semantics. A parity test on real
rows pins them together (tests/preprocess/test_spark_preprocess.py).

Everything here uses only what is known before departure; ``DERIVED_FROM`` records the
raw columns each feature comes from, and no entry may name an outcome column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
def _local_days(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Calendar dates as ``datetime64[D]``; NaT where (year, month, day) is not a date (as pandas' coerce)."""
    months = (year - 1970) * 12 + (month - 1)
    days = months.astype("datetime64[M]").astype("datetime64[D]") + (day - 1).astype("timedelta64[D]")
    real = (month >= 1) & (month <= 12) & (day >= 1) & \
        (days.astype("datetime64[M]") == months.astype("datetime64[M]"))
    return np.where(real, days, np.datetime64("NaT", "D"))


def pandas_weather_hour(records: pd.DataFrame, timezone: str) -> pd.Series:
    """UTC weather key for each record: ``time_hour`` when given, else scheduled hour in local time.

    The local hour is made tz-aware as Spark's ``to_utc_timestamp`` does it: an ambiguous hour (the
    repeated autumn hour) is taken as daylight time, a skipped spring hour is shifted forward.
    """
    given = pd.to_datetime(records.get("time_hour"), utc=True, errors="coerce", format="ISO8601") \
        if "time_hour" in records and records["time_hour"].notna().any() \
        else pd.Series(pd.NaT, index=records.index, dtype="datetime64[ns, UTC]")
    days = _local_days(records["year"].to_numpy(dtype="int64"), records["month"].to_numpy(dtype="int64"),
                       records["day"].to_numpy(dtype="int64"))
    hours = (records["sched_dep_time"].to_numpy(dtype="int64") // 100).astype("timedelta64[h]")
    local = pd.DatetimeIndex(days.astype("datetime64[h]") + hours)
    derived = pd.Series(local.tz_localize(timezone, ambiguous=np.ones(len(local), dtype=bool),
                                          nonexistent="shift_forward").tz_convert("UTC"), index=records.index)
    return given.fillna(derived).dt.floor("h").astype("datetime64[us, UTC]")


#: Per-process caches of the per-request path (:func:`weather_hours_us`): a local (date, hour) or a ``time_hour``
#: text -> UTC hour in microseconds (None: NaT). Each entry is computed by the pandas code of
#: :func:`pandas_weather_hour`, so a hit gives the same number; bounded (cleared when full).
_LOCAL_HOURS: dict[tuple[str, int, int], int | None] = {}
_GIVEN_HOURS: dict[str, int | None] = {}
_CACHE_MAX = 100_000


def _hours_us(hours: pd.Series) -> list[int | None]:
    """A UTC datetime Series floored to the hour as microseconds since the epoch, None for NaT."""
    us = pd.DatetimeIndex(hours.dt.floor("h").astype("datetime64[us, UTC]"))
    return [None if nat else int(v) for v, nat in zip(us.asi8.tolist(), us.isna().tolist())]


def _local_hours_us(days: np.ndarray, hours: np.ndarray, timezone: str) -> list[int | None]:
    """UTC hour (microseconds) of each local (date, hour): exactly :func:`pandas_weather_hour`'s derived branch."""
    local = pd.DatetimeIndex(days.astype("datetime64[h]") + hours.astype("timedelta64[h]"))
    utc = local.tz_localize(timezone, ambiguous=np.ones(len(local), dtype=bool),
                            nonexistent="shift_forward").tz_convert("UTC")
    return _hours_us(pd.Series(utc))


def _given_hours_us(values: list) -> list[int | None]:
    """UTC hour (microseconds) of each given ``time_hour``: exactly :func:`pandas_weather_hour`'s parse."""
    given = pd.to_datetime(pd.Series(values, dtype=object), utc=True, errors="coerce", format="ISO8601")
    return _hours_us(given)


def _remember(cache: dict, misses: dict[Any, list[int]], compute, out: list) -> None:
    """Compute the values of the keys ``misses`` holds (key -> its positions in ``out``) in one ``compute(keys)``
    call, remember them in ``cache`` (emptied first when it would grow beyond ``_CACHE_MAX``) and write each at
    its positions in ``out``."""
    keys = list(misses)
    values = compute(keys)
    if len(cache) + len(keys) > _CACHE_MAX:
        cache.clear()
    for k, v in zip(keys, values):
        cache[k] = v
        for i in misses[k]:
            out[i] = v


def weather_hours_us(days: np.ndarray, sched_dep_time: np.ndarray, time_hour: list,
                     timezone: str) -> tuple[np.ndarray, np.ndarray]:
    """The weather key of :func:`pandas_weather_hour` for column arrays, cached per distinct value.

    A per-request call costs a few dict probes instead of a pandas parse and ``tz_localize``; values
    not seen before are computed by the same pandas code (one call for all of them) and remembered.

    Args:
        days: local dates, ``datetime64[D]`` of shape (n,), NaT where not a date (:func:`_local_days`).
        sched_dep_time: int64 (n,), local ``hhmm``.
        time_hour: (n,) values: ISO-8601 text, or None/NaN when not given.
        timezone: IANA zone of the scheduled times.

    Returns:
        (hour_us, known): int64 (n,) UTC hour in microseconds since the epoch (0 where unknown) and
        bool (n,) False where the hour is NaT (neither a parseable ``time_hour`` nor a calendar date).
    """
    from mlops_ray.preprocess.feature_spec import _is_null

    n = len(days)
    days = days.astype("int64")  # NaT -> int64 min, a key like any other
    hours = sched_dep_time // 100
    given: list[int | None] = [None] * n
    todo: dict[str, list[int]] = {}  # text not seen before -> its positions
    other: list[int] = []  # given, but not text (a Timestamp from a frame...): parsed every time, not cached
    for i, v in enumerate(time_hour):
        if type(v) is str:
            hit = _GIVEN_HOURS.get(v, _GIVEN_HOURS)
            if hit is _GIVEN_HOURS:
                todo.setdefault(v, []).append(i)
            else:
                given[i] = hit
        elif not _is_null(v):
            other.append(i)
    if todo:
        _remember(_GIVEN_HOURS, todo, _given_hours_us, given)
    if other:
        for i, h in zip(other, _given_hours_us([time_hour[i] for i in other])):
            given[i] = h
    out: list[int | None] = given
    miss: dict[tuple[str, int, int], list[int]] = {}
    for i, (g, d, h) in enumerate(zip(given, days.tolist(), hours.tolist())):
        if g is None:
            hit = _LOCAL_HOURS.get((timezone, d, h), _LOCAL_HOURS)
            if hit is _LOCAL_HOURS:
                miss.setdefault((timezone, d, h), []).append(i)
            else:
                out[i] = hit
    if miss:
        _remember(_LOCAL_HOURS, miss, lambda ks: _local_hours_us(
            np.array([k[1] for k in ks], dtype="int64").astype("datetime64[D]"),
            np.array([k[2] for k in ks], dtype="int64"), timezone), out)
    known = np.array([v is not None for v in out], dtype=bool)
    return np.array([0 if v is None else v for v in out], dtype="int64"), known


class LookupIndex:
    """The weather and plane lookup tables indexed for per-request joins (a dict probe per record instead of
    two DataFrame merges; the values are the same float64 numbers, so features are unchanged).

    Args:
        weather_lookup: columns origin, weather_hour (UTC), WEATHER_COLUMNS; one row per (origin, hour).
        planes_lookup: columns tailnum, PLANE_COLUMNS; one row per tailnum.
    """

    def __init__(self, weather_lookup: pd.DataFrame, planes_lookup: pd.DataFrame):
        hours = pd.to_datetime(weather_lookup["weather_hour"], utc=True).astype("datetime64[us, UTC]")
        self._weather = {(o, int(h)): i for i, (o, h) in
                         enumerate(zip(weather_lookup["origin"].tolist(), hours.astype("int64").tolist()))}
        #: the lookup columns present (a table may carry fewer than WEATHER_COLUMNS / PLANE_COLUMNS), in order
        self.weather_columns = [c for c in WEATHER_COLUMNS if c in weather_lookup.columns]
        self.plane_columns = [c for c in PLANE_COLUMNS if c in planes_lookup.columns]
        self._weather_values = weather_lookup[self.weather_columns].to_numpy(dtype="float64")
        self._planes = {t: i for i, t in enumerate(planes_lookup["tailnum"].tolist())}
        self._plane_values = planes_lookup[self.plane_columns].to_numpy(dtype="float64")

    @staticmethod
    def _take(values: np.ndarray, rows: list[int]) -> np.ndarray:
        """``values[rows]`` with NaN rows where ``rows`` is -1 (no match: a left join's nulls)."""
        idx = np.asarray(rows, dtype=np.int64)
        out = np.full((len(idx), values.shape[1]), np.nan)
        hit = idx >= 0
        out[hit] = values[idx[hit]]
        return out

    def weather(self, origin: list, hour_us: np.ndarray, hour_known: np.ndarray) -> np.ndarray:
        """Weather columns (n, len(weather_columns)) for each (origin, UTC hour in microseconds); NaN where unknown."""
        get = self._weather.get
        rows = [get((o, int(h)), -1) if ok else -1 for o, h, ok in zip(origin, hour_us, hour_known)]
        return self._take(self._weather_values, rows)

    def planes(self, tailnum: list) -> np.ndarray:
        """Plane columns (n, len(plane_columns)) for each tail number; NaN where unknown or null."""
        get = self._planes.get
        return self._take(self._plane_values, [get(t, -1) if isinstance(t, str) else -1 for t in tailnum])


def pandas_flights_with_lookups(records: pd.DataFrame, weather_lookup: pd.DataFrame | None,
                                planes_lookup: pd.DataFrame | None, timezone: str,
                                index: LookupIndex | None = None) -> pd.DataFrame:
    """The pandas twin of :func:`spark_flights_with_lookups` for serving.

    Args:
        records: raw flight records, shape (n, k) with the input-schema columns.
        weather_lookup: columns origin, weather_hour (UTC), WEATHER_COLUMNS.
        planes_lookup: columns tailnum, PLANE_COLUMNS.
        timezone: IANA zone of the scheduled times.
        index: the two lookups already indexed (:class:`LookupIndex`, built once per model version by
            :class:`~mlops_ray.preprocess.records.RecordTransformer`); None builds it from the frames.

    Returns:
        DataFrame of shape (n, ...) in the input order with every feature in ``KNOWN_FEATURES``.
    """
    if index is None:
        index = LookupIndex(weather_lookup, planes_lookup)
    out: dict[str, object] = {}  # columns, then one DataFrame: inserting column by column costs ~0.4 ms each
    year = records["year"].to_numpy(dtype="int64")
    month = records["month"].to_numpy(dtype="int64")
    days = _local_days(year, month, records["day"].to_numpy(dtype="int64"))
    sdt = records["sched_dep_time"].to_numpy(dtype="int64")
    out["month"] = month.astype("float64")
    dow = (days.astype("int64") + 3) % 7 + 1.0  # 1970-01-01 was a Thursday; Monday = 1
    out["day_of_week"] = np.where(np.isnat(days), np.nan, dow)
    out["sched_dep_minute_of_day"] = ((sdt // 100) * 60 + sdt % 100).astype("float64")
    sat = pd.to_numeric(records["sched_arr_time"], errors="coerce").to_numpy(dtype="float64", na_value=np.nan) \
        if "sched_arr_time" in records else np.full(len(records), np.nan)
    out["sched_arr_minute_of_day"] = np.floor(sat / 100) * 60 + np.mod(sat, 100)
    out["distance"] = records["distance"].to_numpy(dtype="float64")
    origin, dest = records["origin"].tolist(), records["dest"].tolist()
    out["carrier"] = np.asarray(records["carrier"].tolist(), dtype=object)
    out["origin"] = np.asarray(origin, dtype=object)
    out["dest"] = np.asarray(dest, dtype=object)
    out["route"] = np.asarray([f"{o}-{d}" if isinstance(o, str) and isinstance(d, str) else None
                               for o, d in zip(origin, dest)], dtype=object)
    hour = pandas_weather_hour(records, timezone)
    out["weather_hour"] = hour  # a Series on records.index: keeps its tz-aware dtype
    tailnum = records["tailnum"].tolist() if "tailnum" in records else [None] * len(records)
    out["tailnum"] = np.asarray(tailnum, dtype=object)
    weather = index.weather(origin, hour.astype("int64").to_numpy(), hour.notna().to_numpy())
    for j, c in enumerate(index.weather_columns):
        out[c] = weather[:, j]
    planes = index.planes(tailnum)
    for j, c in enumerate(index.plane_columns):
        out[c] = planes[:, j]
    return pd.DataFrame(out, index=records.index)



def _numbers(values: list) -> np.ndarray:
    """float64 (n,) of values as ``pd.to_numeric(errors="coerce")`` gives them: None -> NaN; any value that is not
    an int/float (text, bool...) sends the whole list through pandas itself."""
    if all(v is None or (type(v) in (int, float)) for v in values):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _objects(values: list) -> np.ndarray:
    """An object array (n,) holding ``values`` as they are (no conversion, no nesting)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def columns_flights_with_lookups(records: list[dict], index: LookupIndex, timezone: str) -> dict[str, np.ndarray]:
    """The column-array twin of :func:`pandas_flights_with_lookups` for a request's records (no DataFrame).

    Same values bit for bit (a test pins it on real rows, DST hours, nulls and unseen values), at a
    fraction of the cost for a few records: the per-request path of
    :meth:`~mlops_ray.preprocess.records.RecordTransformer.derived_columns`.

    Args:
        records: n raw flight records (dicts keyed by input-schema column; an optional column may be
            absent or None). The required columns ``year``, ``month``, ``day``, ``sched_dep_time``
            must be integers and ``distance`` a number (as :func:`~mlops_ray.serve.schema.validate_records`
            guarantees); otherwise the conversion raises (TypeError, ValueError or KeyError).
        index: the lookups (:class:`LookupIndex`).
        timezone: IANA zone of the scheduled times.

    Returns:
        feature -> array of shape (n,), with every key of :func:`pandas_flights_with_lookups`:
        float64 for numbers (NaN for null), object (str or None) for carrier, origin, dest, route and
        tailnum, and ``weather_hour`` as ``datetime64[us]`` (UTC, NaT where unknown).
    """
    year = np.array([r["year"] for r in records], dtype=np.int64)
    month = np.array([r["month"] for r in records], dtype=np.int64)
    days = _local_days(year, month, np.array([r["day"] for r in records], dtype=np.int64))
    sdt = np.array([r["sched_dep_time"] for r in records], dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    out["month"] = month.astype("float64")
    dow = (days.astype("int64") + 3) % 7 + 1.0  # 1970-01-01 was a Thursday; Monday = 1
    out["day_of_week"] = np.where(np.isnat(days), np.nan, dow)
    out["sched_dep_minute_of_day"] = ((sdt // 100) * 60 + sdt % 100).astype("float64")
    sat = _numbers([r.get("sched_arr_time") for r in records])
    out["sched_arr_minute_of_day"] = np.floor(sat / 100) * 60 + np.mod(sat, 100)
    out["distance"] = np.array([r["distance"] for r in records], dtype=np.float64)
    origin, dest = [r.get("origin") for r in records], [r.get("dest") for r in records]
    out["carrier"] = _objects([r.get("carrier") for r in records])
    out["origin"] = _objects(origin)
    out["dest"] = _objects(dest)
    out["route"] = _objects([f"{o}-{d}" if isinstance(o, str) and isinstance(d, str) else None
                             for o, d in zip(origin, dest)])
    hour_us, known = weather_hours_us(days, sdt, [r.get("time_hour") for r in records], timezone)
    out["weather_hour"] = np.where(known, hour_us, np.iinfo(np.int64).min).astype("datetime64[us]")
    tailnum = [r.get("tailnum") for r in records]
    out["tailnum"] = _objects(tailnum)
    weather = index.weather(origin, hour_us, known)
    for j, c in enumerate(index.weather_columns):
        out[c] = weather[:, j]
    planes = index.planes(tailnum)
    for j, c in enumerate(index.plane_columns):
        out[c] = planes[:, j]
    return out


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
