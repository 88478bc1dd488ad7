"""Windowed histograms: exact counts, expiry, and PSI from summed replica windows equal to PSI on all rows."""

from __future__ import annotations

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
