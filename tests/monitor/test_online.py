"""Online drift without a cluster: the replica recorder's counts, the monitor's sum over replicas (PSI equal to
PSI over all rows, windows expiring), and rolling metrics from a real SQLite prediction log."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mlops_ray.monitor.drift import NumericDriftDetector, bin_counts, psi
from mlops_ray.monitor.online import (DriftMonitor, DriftReference, OnlineDriftRecorder, labelled_predictions_since,
                                      rolling_metrics, rolling_summary)
from mlops_ray.monitor.window import FeatureWindow

RNG = np.random.default_rng(5)
TRAIN = pd.DataFrame({"temp": RNG.normal(size=5000), "carrier": RNG.choice(["AA", "B6", "DL", "UA"], size=5000)})
NUM = NumericDriftDetector().fit(TRAIN["temp"])
#: reference_stats.json's layout (mlops_ray/preprocess/reference.py), vocabulary of 3 + other
STATS = {"numeric": {"temp": {"count": 5000, "nulls": 0, "edges": NUM.edges_.tolist(),
                              "counts": NUM.reference_counts_.astype(int).tolist()}},
         "categorical": {"carrier": {"count": 5000, "nulls": 0, "other": int((TRAIN["carrier"] == "UA").sum()),
                                     "categories": [{"value": c, "count": int((TRAIN["carrier"] == c).sum())}
                                                    for c in ("AA", "B6", "DL")]}}}
REF = DriftReference.from_stats(STATS)


def _derived(n, loc=0.0):
    d = pd.DataFrame({"temp": RNG.normal(loc=loc, size=n), "carrier": RNG.choice(["AA", "B6", "DL", "UA", "ZZ"], n),
                      "tailnum": "N1"})
    d["carrier"] = d["carrier"].astype(object)
    d.loc[d.index[: n // 10], "temp"] = np.nan
    d.loc[d.index[n // 10: n // 5], "carrier"] = None
    return d


def test_the_reference_takes_the_stats_bins_and_names_a_feature_it_lacks():
    assert REF.numeric_edges["temp"] == NUM.edges_.tolist()
    assert REF.categories["carrier"] == ["AA", "B6", "DL"] and len(REF.counts["carrier"]) == 4  # + other
    with pytest.raises(ValueError, match=r"feature 'humid' has no drift reference.*\['carrier', 'temp'\]"):
        DriftReference.from_stats(STATS, features=["temp", "humid"])


def test_a_model_dir_without_reference_stats_says_how_to_fix_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="register the model again"):
        DriftReference.from_model_dir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "reference_stats.json").write_text(json.dumps(STATS))
    assert DriftReference.from_model_dir(tmp_path) == REF


@pytest.mark.parametrize("n", [1, 5, 200], ids=["one-record", "small-python-path", "numpy-path"])
def test_column_counts_equal_the_frame_path(n):
    d = _derived(n)
    d["temp"] = d["temp"].astype(object)
    d.loc[d.index[-1], "temp"] = "N/A" if n > 1 else None  # not a number: null on both paths
    fast, frame = REF.new_window(300), REF.new_window(300)
    fast.update_columns({"temp": d["temp"].to_numpy(), "carrier": d["carrier"].to_numpy()}, n, now=3.0)
    frame.update(d, now=3.0)
    assert {k: v.tolist() for k, v in fast.totals(now=3.0).items()} == \
        {k: v.tolist() for k, v in frame.totals(now=3.0).items()}


def test_two_replicas_at_the_monitor_give_the_psi_of_all_their_rows():
    a, b = OnlineDriftRecorder(REF, window_s=60), OnlineDriftRecorder(REF, window_s=60)
    p1, p2 = _derived(300, loc=0.4), _derived(500, loc=0.4)
    s1, s2 = RNG.uniform(size=300), RNG.uniform(size=500)
    for i in range(0, 300, 7):  # request by request
        a.observe(p1.iloc[i:i + 7], s1[i:i + 7], now=100.0)
    b.observe(p2, s2, now=101.0)
    mon = DriftMonitor(REF, window_s=60, export_interval_s=0)
    mon.push(a.snapshot())
    mon.push(b.snapshot())
    mon.push(b.snapshot())  # a repeated push replaces the replica's window: nothing counted twice
    d = mon.drift(now=110.0)
    both = pd.concat([p1, p2])
    assert d["rows"] == 800 and d["replicas"] == sorted([a.replica_id, b.replica_id])
    assert d["features"]["temp"]["psi"] == pytest.approx(NUM.score(both["temp"])["psi"], abs=1e-12)
    assert d["features"]["temp"]["null_share"] == pytest.approx(both["temp"].isna().mean(), abs=1e-12)
    cats = both["carrier"].dropna()
    want = psi(REF.counts["carrier"], [int((cats == c).sum()) for c in ("AA", "B6", "DL")]
               + [int((~cats.isin(["AA", "B6", "DL"])).sum())])
    assert d["features"]["carrier"]["psi"] == pytest.approx(want, abs=1e-12)
    assert d["score_histogram"] == bin_counts(np.concatenate([s1, s2]), [i / 10 for i in range(1, 10)]).tolist()
    # the window of one replica alone is a different figure: the sum is what makes it right
    solo = DriftMonitor(REF, window_s=60, export_interval_s=0)
    solo.push(a.snapshot())
    assert abs(solo.drift(now=110.0)["features"]["temp"]["psi"] - d["features"]["temp"]["psi"]) > 1e-3
    # 60 s later both windows have expired
    gone = mon.drift(now=170.0)
    assert gone["rows"] == 0 and gone["features"]["temp"] == {"rows": 0, "null_share": None, "psi": None}
    assert mon.window_start(110.0) == pytest.approx(54.0)  # 10 slots of 6 s: the first slot start after 50


def test_rolling_metrics_come_from_feedback_received_in_the_window(tmp_path):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from mlops_ray.serve.prediction_log import SQLitePredictionLog

    log = SQLitePredictionLog(tmp_path / "predictions.db")
    proba = RNG.uniform(size=40)
    truth = (proba + RNG.normal(scale=0.3, size=40) > 0.5).astype(int)
    preds = [{"probability": float(p), "label": int(p >= 0.4), "threshold": 0.4} for p in proba]
    log.log_predictions("r1", "flights", "1", [{"i": i} for i in range(40)], preds)
    assert labelled_predictions_since(tmp_path / "predictions.db", 0.0)[0].size == 0  # no feedback yet
    log.add_feedback("r1", {i: int(t) for i, t in enumerate(truth)})
    got = rolling_metrics(*labelled_predictions_since(tmp_path / "predictions.db", 0.0))
    assert got == pytest.approx({"rows": 40, "accuracy": accuracy_score(truth, proba >= 0.4),
                                 "f1": f1_score(truth, proba >= 0.4), "roc_auc": roc_auc_score(truth, proba)})
    import time

    assert labelled_predictions_since(tmp_path / "predictions.db", time.time() + 1)[0].size == 0  # out of window
    one_class = rolling_metrics(proba[:3], np.ones(3, int), np.ones(3, int))
    assert one_class["roc_auc"] is None and one_class["accuracy"] == 1.0
    assert rolling_metrics(*labelled_predictions_since(tmp_path / "missing.db", 0.0))["rows"] == 0
    log.close()


def _sklearn(proba, pred, true):
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    return {"rows": len(true), "accuracy": accuracy_score(true, pred), "f1": f1_score(true, pred),
            "roc_auc": roc_auc_score(true, proba)}


def test_rolling_metrics_are_none_below_min_window_rows_and_scikit_learns_at_or_above():
    proba = RNG.uniform(size=31)
    true = (proba + RNG.normal(scale=0.3, size=31) > 0.5).astype(int)
    pred = (proba >= 0.5).astype(int)
    assert len(set(true[:29].tolist())) == 2  # both classes: only the minimum can make the figures undefined
    assert rolling_metrics(proba[:29], pred[:29], true[:29], min_rows=30) == {"rows": 29, "accuracy": None,
                                                                             "f1": None, "roc_auc": None}
    for n in (30, 31):
        assert rolling_metrics(proba[:n], pred[:n], true[:n], min_rows=30) == pytest.approx(
            _sklearn(proba[:n], pred[:n], true[:n]), abs=1e-12)
    # at the minimum, one class only still leaves ROC AUC undefined
    one_class = rolling_metrics(proba[:30], np.ones(30, int), np.ones(30, int), min_rows=30)
    assert one_class == {"rows": 30, "accuracy": 1.0, "f1": 1.0, "roc_auc": None}


def test_the_drift_monitor_uses_its_min_rows_for_rolling_metrics(tmp_path):
    """The monitor's min_rows (monitor.min_window_rows, as start_drift_monitor passes it) holds for the rolling
    metrics as for PSI: 8 labels with a minimum of 30 give None (exported NaN), not a noisy 0.75."""
    import time

    from mlops_ray.serve.prediction_log import SQLitePredictionLog

    db = tmp_path / "predictions.db"
    log = SQLitePredictionLog(db)
    proba = RNG.uniform(size=40)
    true = (proba + RNG.normal(scale=0.3, size=40) > 0.5).astype(int)
    true[:2] = [0, 1]  # both classes among the first labels
    log.log_predictions("r", "flights", "1", [{"i": i} for i in range(40)],
                        [{"probability": float(p), "label": int(p >= 0.5), "threshold": 0.5} for p in proba])
    mon = DriftMonitor(REF, window_s=3600, prediction_log_path=str(db), export_interval_s=0, min_rows=30)
    log.add_feedback("r", {i: int(true[i]) for i in range(8)})
    assert mon.rolling(now=time.time() + 1) == {"rows": 8, "accuracy": None, "f1": None, "roc_auc": None}
    loose = DriftMonitor(REF, window_s=3600, prediction_log_path=str(db), export_interval_s=0, min_rows=8)
    assert loose.rolling(now=time.time() + 1) == pytest.approx(
        _sklearn(proba[:8], (proba[:8] >= 0.5).astype(int), true[:8]), abs=1e-12)
    log.add_feedback("r", {i: int(true[i]) for i in range(8, 30)})
    assert mon.rolling(now=time.time() + 1) == pytest.approx(
        _sklearn(proba[:30], (proba[:30] >= 0.5).astype(int), true[:30]), abs=1e-12)
    log.close()


def test_the_rolling_summary_says_when_metrics_were_not_computed():
    assert rolling_summary({"rows": 5, "accuracy": None, "f1": None, "roc_auc": None}, 300.0, 30) == (
        "feedback over the last 300 s: 5 labelled records (fewer than monitor.min_window_rows = 30: metrics not "
        "computed)")
    assert rolling_summary({"rows": 40, "accuracy": 0.9, "f1": 0.875, "roc_auc": None}, 300.0, 30) == (
        "feedback over the last 300 s: 40 labelled records; accuracy 0.900, F1 0.875, ROC AUC -")
    assert rolling_summary({"rows": 0, "accuracy": None, "f1": None, "roc_auc": None}, 60.0, 30) == (
        "feedback over the last 60 s: no labelled record")


def test_a_monitor_without_a_log_has_no_rolling_metrics():
    assert DriftMonitor(REF, export_interval_s=0).rolling() == {"rows": 0, "accuracy": None, "f1": None,
                                                                "roc_auc": None}


def test_feature_window_update_columns_treats_a_missing_feature_as_null():
    w = FeatureWindow({"temp": NUM.edges_}, {"carrier": ["AA"]}, window_s=10)
    w.update_columns({}, 4, now=1.0)
    t = w.totals(now=1.0)
    assert t["temp"][-1] == 4 and t["carrier"][-1] == 4
