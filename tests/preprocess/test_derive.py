"""Feature derivation and the feature spec on tiny frames (no Spark)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_ray.config import OUTCOME_COLUMNS
from mlops_ray.errors import DataError
from mlops_ray.preprocess.derive import DERIVED_FROM, INPUT_SCHEMA, pandas_flights_with_lookups, pandas_weather_hour
from mlops_ray.preprocess.feature_spec import CategoricalSpec, FeatureSpec

TZ = "America/New_York"


def _records(**over):
    base = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
            "dest": "SFO", "distance": 2565.0, "sched_arr_time": 2105, "tailnum": "N1", "time_hour": None}
    base.update(over)
    return pd.DataFrame([base])


def test_no_feature_derives_from_an_outcome_column():
    for feature, sources in DERIVED_FROM.items():
        assert not set(sources) & set(OUTCOME_COLUMNS), feature
    assert not set(INPUT_SCHEMA) & set(OUTCOME_COLUMNS)


def test_calendar_and_clock_features():
    weather = pd.DataFrame({"origin": ["EWR"], "weather_hour": [pd.Timestamp("2013-11-04T22:00Z")],
                            **{c: [1.0] for c in ("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust",
                                                  "precip", "pressure", "visib")}})
    planes = pd.DataFrame({"tailnum": ["N1"], "plane_year": [2001.0], "seats": [150.0], "engines": [2.0]})
    out = pandas_flights_with_lookups(_records(), weather, planes, TZ).iloc[0]
    assert out["day_of_week"] == 1.0  # 2013-11-04 was a Monday
    assert out["sched_dep_minute_of_day"] == 17 * 60 + 45
    assert out["sched_arr_minute_of_day"] == 21 * 60 + 5
    assert out["route"] == "EWR-SFO"
    # 17:00 EST (after the 3 Nov DST change) is 22:00 UTC: the weather row is found
    assert out["temp"] == 1.0 and out["plane_year"] == 2001.0


@pytest.mark.parametrize(("month", "day", "hour", "utc"), [
    (7, 1, 9, "2013-07-01T13:00Z"),   # EDT, UTC-4
    (1, 15, 9, "2013-01-15T14:00Z"),  # EST, UTC-5
])
def test_weather_hour_derived_in_local_time(month, day, hour, utc):
    rec = _records(month=month, day=day, sched_dep_time=hour * 100 + 30)
    assert pandas_weather_hour(rec, TZ).iloc[0] == pd.Timestamp(utc)


def test_weather_hour_prefers_given_time_hour():
    rec = _records(time_hour="2013-11-04T23:00:00Z")
    assert pandas_weather_hour(rec, TZ).iloc[0] == pd.Timestamp("2013-11-04T23:00Z")


def test_missing_lookup_rows_give_nulls_not_errors():
    empty_w = pd.DataFrame(columns=["origin", "weather_hour", "temp"]).astype({"weather_hour": "datetime64[us, UTC]"})
    empty_p = pd.DataFrame(columns=["tailnum", "plane_year", "seats", "engines"])
    out = pandas_flights_with_lookups(_records(tailnum=None), empty_w, empty_p, TZ)
    assert len(out) == 1 and pd.isna(out["temp"].iloc[0]) and pd.isna(out["seats"].iloc[0])


def _spec():
    return FeatureSpec(numeric=("a", "b"), impute=(10.0, 0.0), mean=(5.0, 1.0), std=(2.0, 0.0),
                       categorical=(CategoricalSpec("c", labels=("y", "x")),), timezone=TZ)


def test_feature_spec_impute_scale_and_reserved_slots():
    frame = pd.DataFrame({"a": [7.0, None, np.nan], "b": [3.0, 4.0, 5.0], "c": ["x", "never-seen", None]})
    X = _spec().transform(frame)
    assert X.shape == (3, 2 + 4)  # width fixed at fit time: 2 labels + <missing> + <other>
    np.testing.assert_array_equal(X[0], [1.0, 0.0, 0, 1, 0, 0])  # (7-5)/2; std 0 -> 0 (as Spark)
    np.testing.assert_array_equal(X[1], [2.5, 0.0, 0, 0, 0, 1])  # None imputed 10; unseen -> <other>
    np.testing.assert_array_equal(X[2], [2.5, 0.0, 0, 0, 1, 0])  # NaN imputed 10; null -> <missing>


@pytest.mark.parametrize("value, slot", [("y", 0), ("x", 1), (None, 2), (np.nan, 2), ("__missing__", 2),
                                         ("__other__", 3), ("X", 3), ("", 3)],
                         ids=["label 0", "label 1", "None", "NaN", "missing token", "other token", "case differs",
                              "empty string"])
def test_feature_spec_categorical_slot_of_each_kind_of_value(value, slot):
    X = _spec().transform(pd.DataFrame({"a": [5.0], "b": [1.0], "c": [value]}))
    expected = np.zeros(4)
    expected[slot] = 1.0
    np.testing.assert_array_equal(X[0, 2:], expected)


def test_feature_spec_round_trip(tmp_path):
    spec = _spec()
    spec.save(tmp_path / "f.json")
    assert FeatureSpec.load(tmp_path / "f.json") == spec
    assert spec.feature_names == ["a", "b", "c=y", "c=x", "c=<missing>", "c=<other>"]


def test_feature_spec_of_an_older_layout_is_refused_with_the_fix(tmp_path):
    old = _spec().to_dict()
    old.pop("format")
    (tmp_path / "f.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match=r"layout format 1, expected 2.*Re-run `mlops-ray preprocess`"):
        FeatureSpec.load(tmp_path / "f.json")


def test_route_is_null_when_origin_or_dest_is_null():
    w = pd.DataFrame(columns=["origin", "weather_hour", "temp"]).astype({"weather_hour": "datetime64[us, UTC]"})
    p = pd.DataFrame(columns=["tailnum", "plane_year", "seats", "engines"])
    out = pandas_flights_with_lookups(_records(origin=None), w, p, TZ)
    assert pd.isna(out["route"].iloc[0])
    assert pandas_flights_with_lookups(_records(), w, p, TZ)["route"].iloc[0] == "EWR-SFO"
