"""Evaluation on synthetic predictions: threshold rules, undefined metrics, slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_ray.config import EvaluateConfig
from mlops_ray.evaluate import choose_threshold, evaluate_predictions, metric_value


def _data(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)
    return y, p


def test_threshold_rules():
    y, p = _data()
    t_f1 = choose_threshold(EvaluateConfig(threshold_rule="max_f1"), y, p)
    f1s = [metric_value("f1", y, p, t) for t in np.linspace(0.05, 0.95, 19)]
    assert metric_value("f1", y, p, t_f1) >= max(f1s) - 1e-12
    cfg = EvaluateConfig(threshold_rule="target_precision", target_precision=0.8)
    t_p = choose_threshold(cfg, y, p)
    assert metric_value("precision", y, p, t_p) >= 0.8
    assert metric_value("precision", y, p, t_p - 0.02) < 0.8 or t_p < 0.05  # the lowest such threshold
    assert choose_threshold(EvaluateConfig(threshold_rule="fixed", fixed_threshold=0.3), y, p) == 0.3


def test_single_class_label_is_undefined_not_a_crash():
    y = np.zeros(300, dtype=int)
    p = np.linspace(0.01, 0.99, 300)
    out = evaluate_predictions(EvaluateConfig(n_bootstrap=20), y, p, 0.5, pd.DataFrame({"carrier": ["AA"] * 300}))
    assert out["model"]["roc_auc"] is None and out["model"]["pr_auc"] is None
    assert "only one class (0)" in out["undefined"]["roc_auc"]
    assert out["intervals"]["roc_auc"] is None
    assert out["model"]["accuracy"] == pytest.approx(0.5, abs=0.01)
    assert out["slices"][0]["metric"] is None and "undefined" in out["slices"][0]["note"]


def test_weak_slice_is_flagged_and_small_slice_skipped():
    y, p = _data(3000)
    carrier = np.array(["AA"] * 1500 + ["BB"] * 1400 + ["CC"] * 100)
    p = p.copy()
    rng = np.random.default_rng(1)
    p[carrier == "BB"] = rng.random(1400)  # no signal in BB
    cfg = EvaluateConfig(slice_columns=("carrier", "nope"), min_slice_size=200, n_bootstrap=100, slice_margin=0.05)
    out = evaluate_predictions(cfg, y, p, 0.5, pd.DataFrame({"carrier": carrier}))
    rows = {(s["column"], s["value"]): s for s in out["slices"]}
    assert rows[("carrier", "BB")]["flagged"] and "upper bound" in rows[("carrier", "BB")]["note"]
    assert not rows[("carrier", "AA")]["flagged"]
    assert rows[("carrier", "CC")]["metric"] is None and "fewer than 200" in rows[("carrier", "CC")]["note"]
    assert "not in the test data" in rows[("nope", None)]["note"]


def test_intervals_bracket_the_estimate_and_curves_exist():
    y, p = _data()
    out = evaluate_predictions(EvaluateConfig(n_bootstrap=100), y, p, 0.5)
    for k, v in out["model"].items():
        lo, hi = out["intervals"][k]
        assert lo <= v <= hi, k
    assert set(out["curves"]) == {"roc", "pr", "calibration"}
    assert sum(out["confusion"].values()) == len(y)
