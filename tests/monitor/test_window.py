"""Windowed histograms: exact counts, expiry, and PSI from summed replica windows equal to PSI on all rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_ray.monitor.drift import CategoricalDriftDetector, NumericDriftDetector
from mlops_ray.monitor.window import FeatureWindow, window_drift

RNG = np.random.default_rng(1)
REF = pd.DataFrame({"temp": RNG.normal(size=4000), "carrier": RNG.choice(["AA", "B6", "DL"], size=4000)})
NUM = NumericDriftDetector().fit(REF["temp"])
CAT = CategoricalDriftDetector().fit(REF["carrier"])


def _window(**kw):
    return FeatureWindow({"temp": NUM.edges_}, {"carrier": CAT.categories_}, **kw)


def _batch(n, loc=0.0):
    b = pd.DataFrame({"temp": RNG.normal(loc=loc, size=n), "carrier": RNG.choice(["AA", "B6", "DL", "ZZ"], size=n)})
    b.loc[b.index[:5], "temp"] = np.nan
    b.loc[b.index[5:8], "carrier"] = None
    return b


def test_counts_are_exact_with_nulls_and_unseen_last():
    w = _window()
    b = _batch(200)
    w.update(b, now=1000.0)
    t = w.totals(now=1000.0)
    assert t["temp"].sum() == 200 and t["temp"][-1] == 5
    assert t["carrier"][-1] == 3 and t["carrier"][-2] == (b["carrier"] == "ZZ").sum()
    assert t["carrier"][:3].tolist() == [(b["carrier"] == c).sum() for c in ("AA", "B6", "DL")]


def test_old_slots_expire_after_the_window():
    w = _window(window_s=60, slots=6)
    w.update(_batch(100), now=0.0)
    w.update(_batch(50), now=45.0)
    assert w.totals(now=50.0)["temp"].sum() == 150
    assert w.totals(now=65.0)["temp"].sum() == 50  # the slot of t=0 left the window
    w.update(_batch(10), now=125.0)  # reuses slot storage: stale counts must not survive
    assert w.totals(now=125.0)["temp"].sum() == 10


def test_psi_from_two_replicas_summed_equals_psi_over_all_rows():
    a, b = _window(), _window()
    part1, part2 = _batch(700, loc=0.5), _batch(500, loc=0.5)
    a.update(part1, now=10.0)
    b.update(part2, now=12.0)
    ta, tb = a.totals(now=20.0), b.totals(now=20.0)
    summed = {k: ta[k] + tb[k] for k in ta}
    ref = {"temp": NUM.reference_counts_, "carrier": np.append(CAT.reference_counts_, 0.0)}
    drift = window_drift(summed, ref)
    both = pd.concat([part1, part2])
    assert drift["temp"]["psi"] == pytest.approx(NUM.score(both["temp"])["psi"], abs=1e-12)
    assert drift["temp"]["null_share"] == pytest.approx(10 / 1200)
    assert drift["carrier"]["rows"] == 1200


def test_an_empty_or_tiny_window_has_no_psi():
    w = _window()
    ref = {"temp": NUM.reference_counts_, "carrier": np.append(CAT.reference_counts_, 0.0)}
    assert window_drift(w.totals(now=0.0), ref)["temp"] == {"rows": 0, "null_share": None, "psi": None}
    w.update(_batch(12), now=1.0)
    assert window_drift(w.totals(now=1.0), ref)["temp"]["psi"] is None


def test_the_per_request_path_counts_exactly_like_the_frame_path():
    b = _batch(300)
    b["temp"] = b["temp"].astype(object)
    b.loc[b.index[10], "temp"] = "N/A"  # not a number: null on both paths
    b.loc[b.index[11], "carrier"] = np.nan
    frame, recs = _window(), _window()
    frame.update(b, now=5.0)
    recs.update_records(b.to_dict("records") + [{"carrier": "AA"}], now=5.0)  # a record without 'temp'
    tf, tr = frame.totals(now=5.0), recs.totals(now=5.0)
    assert tr["temp"].tolist() == (tf["temp"] + np.eye(len(tf["temp"]), dtype=int)[-1]).tolist()
    assert tr["carrier"][:-1].tolist() == (tf["carrier"][:-1] + np.eye(len(tf["carrier"]) - 1, dtype=int)[0]).tolist()
    assert tr["carrier"][-1] == tf["carrier"][-1]


def test_typed_categoricals_count_as_spark_wrote_the_reference(tmp_path):
    """A boolean or integer categorical's reference categories are Spark's text ("true", "1"): requests' True and
    a pandas-upcast 1.0 must land there in every update path, not in the unseen bucket."""
    from mlops_ray.monitor.online import DriftReference
    from mlops_ray.preprocess.feature_spec import CategoricalSpec, FeatureSpec

    cats, types = {"b": ["true", "false"], "n": ["1", "2"]}, {"b": "boolean", "n": "integer"}
    records = [{"b": True, "n": 1}, {"b": False, "n": None}, {"b": None, "n": 2}, {"b": True, "n": 7}]
    frame = pd.DataFrame.from_records(records)  # n becomes float64: 1.0, NaN, 2.0, 7.0
    want = {"b": [2, 1, 0, 1], "n": [1, 1, 1, 1]}  # categories..., unseen, null
    for update in (lambda w: w.update_records(records, now=1.0), lambda w: w.update(frame, now=1.0),
                   lambda w: w.update_columns({k: frame[k].to_numpy() for k in cats}, len(frame), now=1.0),
                   lambda w: w.update_columns({k: [r.get(k) for r in records] for k in cats}, 4, now=1.0)):
        w = FeatureWindow({}, cats, category_types=types)
        update(w)
        assert {k: v.tolist() for k, v in w.totals(now=1.0).items()} == want
        plain = FeatureWindow({}, cats)  # the check can fail: Python's text ("True", "1.0") is unseen
        update(plain)
        assert plain.totals(now=1.0)["b"][:2].tolist() == [0, 0]

    # the types come from the version's feature_spec.json, beside its reference_stats.json
    stats = {"numeric": {}, "categorical": {k: {"count": 10, "other": 0, "categories": [
        {"value": c, "count": 5} for c in v]} for k, v in cats.items()}}
    (tmp_path / "reference_stats.json").write_text(json.dumps(stats))
    FeatureSpec(numeric=(), impute=(), mean=(), std=(), timezone="UTC", recipe="table",
                categorical=tuple(CategoricalSpec(k, tuple(v)) for k, v in cats.items()),
                input_schema=(("b", "boolean", False), ("n", "integer", False))).save(tmp_path / "feature_spec.json")
    ref = DriftReference.from_model_dir(tmp_path)
    assert ref.category_types == types
    w = ref.new_window(300)
    w.update_records(records, now=1.0)
    assert w.totals(now=1.0)["b"].tolist() == want["b"]
