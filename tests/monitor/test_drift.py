"""Drift detectors: definitions against hand computations and SciPy, and every difficult batch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from mlops_ray.monitor.drift import (CategoricalDriftDetector, DatasetDriftDetector, NumericDriftDetector, bin_counts,
                                     psi)

RNG = np.random.default_rng(0)
REF = RNG.normal(size=5000)


def test_psi_is_the_textbook_sum_and_zero_on_identical_histograms():
    p, q = np.array([50, 30, 20]), np.array([30, 30, 40])
    expected = sum((b - a) * math.log(b / a) for a, b in zip(p / 100, q / 100))
    assert psi(p, q) == pytest.approx(expected, rel=1e-12)
    assert psi(p, p) == 0.0
    assert psi([10, 0], [5, 5]) == pytest.approx((0.5 - 1e-4) * math.log(0.5 / 1e-4) + (0.5 - 1) * math.log(0.5), rel=1e-9)


@pytest.mark.parametrize("ref, batch, match", [([1, 2], [1, 2, 3], "same bins"), ([0, 0], [1, 1], "empty histogram")])
def test_psi_refuses_mismatched_or_empty_histograms(ref, batch, match):
    with pytest.raises(ValueError, match=match):
        psi(ref, batch)


def test_bins_are_right_closed_and_outer_bins_take_values_beyond_the_reference():
    assert bin_counts(np.array([-100, 0, 0.5, 1, 1.5, 100]), np.array([0.0, 1.0])).tolist() == [2, 2, 2]


def test_numeric_reference_bins_hold_equal_shares_and_a_same_distribution_batch_is_ok():
    det = NumericDriftDetector().fit(REF)
    assert len(det.edges_) == 9 and det.reference_counts_.tolist() == [500.0] * 10
    rep = det.score(RNG.normal(size=3000))
    assert rep["status"] == "ok" and rep["psi"] < 0.02 and rep["reasons"] == []


def test_a_shifted_batch_drifts_on_psi_and_ks_with_scipy_s_statistic():
    det = NumericDriftDetector().fit(REF)
    batch = RNG.normal(loc=1.0, size=3000)
    rep = det.score(batch)
    assert rep["status"] == "drift" and rep["psi"] > 0.5
    assert rep["ks_statistic"] == pytest.approx(ks_2samp(REF, batch).statistic, abs=1e-12)
    assert any(r.startswith("PSI") for r in rep["reasons"]) and any(r.startswith("KS") for r in rep["reasons"])


@pytest.mark.parametrize("batch, status, reason", [
    ([], "insufficient_data", "empty window"),
    (None, "insufficient_data", "empty window"),
    ([0.3], "insufficient_data", "1 non-null values (< min_rows 30)"),
    ([np.nan] * 50, "drift", "null rate 1.000 vs 0.000"),
    (["N/A"] * 5 + list(RNG.normal(size=40)), "drift", "null rate 0.111 vs 0.000"),  # unparseable = null
])
def test_difficult_numeric_batches_are_reported_never_raised(batch, status, reason):
    rep = NumericDriftDetector().fit(REF).score(batch)
    assert rep["status"] == status and any(reason in r for r in rep["reasons"]), rep


def test_nulls_replacing_values_count_as_drift_even_if_the_rest_is_unchanged():
    x = RNG.normal(size=3000)
    x[:600] = np.nan  # 20 % nulls; dropping them would leave a perfect match
    rep = NumericDriftDetector().fit(REF).score(x)
    assert rep["psi"] < 0.05 and rep["status"] == "drift" and rep["null_rate"] == pytest.approx(0.2)


def test_numeric_detector_from_stored_bins_equals_the_one_from_raw_values():
    raw = NumericDriftDetector().fit(REF)
    stored = NumericDriftDetector().fit_binned(raw.edges_, raw.reference_counts_, null_count=0)
    batch = RNG.normal(loc=0.3, size=2000)
    assert stored.score(batch)["psi"] == raw.score(batch)["psi"]
    with pytest.raises(ValueError, match="9 edges need 10 bin counts; got 9"):
        NumericDriftDetector().fit_binned(raw.edges_, raw.reference_counts_[:-1], null_count=0)


def test_unfitted_and_empty_references_are_clear_errors():
    with pytest.raises(RuntimeError, match="not fitted yet; call fit"):
        NumericDriftDetector().score([1.0])
    with pytest.raises(ValueError, match="no non-null values"):
        NumericDriftDetector().fit([np.nan, None])
    with pytest.raises(ValueError, match="no non-null categories"):
        CategoricalDriftDetector().fit([None, None])


CATS = pd.Series(RNG.choice(["AA", "B6", "DL", "UA"], p=[0.4, 0.3, 0.2, 0.1], size=5000))


def test_categorical_same_mix_is_ok_and_js_distance_is_scipys():
    det = CategoricalDriftDetector().fit(CATS)
    batch = pd.Series(RNG.choice(["AA", "B6", "DL", "UA"], p=[0.4, 0.3, 0.2, 0.1], size=3000))
    rep = det.score(batch)
    assert rep["status"] == "ok" and rep["new_category_share"] == 0.0
    ref = CATS.value_counts().reindex(["AA", "B6", "DL", "UA"]).to_numpy()
    obs = batch.value_counts().reindex(["AA", "B6", "DL", "UA"]).to_numpy()
    assert rep["js_distance"] == pytest.approx(jensenshannon(np.append(ref, 0) / ref.sum(),
                                                             np.append(obs, 0) / obs.sum(), base=2), abs=1e-12)


def test_a_changed_mix_and_new_categories_drift():
    det = CategoricalDriftDetector().fit(CATS)
    shifted = det.score(pd.Series(RNG.choice(["AA", "UA"], p=[0.2, 0.8], size=2000)))
    assert shifted["status"] == "drift" and shifted["js_distance"] > 0.3
    new = det.score(pd.Series(["AA"] * 80 + ["ZZ"] * 15 + ["YY"] * 5))
    assert new["new_category_share"] == pytest.approx(0.2) and new["new_categories"] == ["YY", "ZZ"]
    assert new["status"] == "drift" and any("never saw" in r for r in new["reasons"])


@pytest.mark.parametrize("batch, status", [([], "insufficient_data"), (["AA"], "insufficient_data"),
                                           ([None] * 40, "drift"), (["QQ"], "drift")])
def test_difficult_categorical_batches(batch, status):
    assert CategoricalDriftDetector().fit(CATS).score(batch)["status"] == status


def test_dataset_detector_reports_each_feature_and_a_missing_column():
    ref = pd.DataFrame({"temp": REF, "carrier": CATS})
    det = DatasetDriftDetector(numeric=("temp",), categorical=("carrier",)).fit(ref)
    rep = det.score(pd.DataFrame({"temp": RNG.normal(loc=2, size=500)}))
    assert rep["drifted"] == ["temp"] and rep["missing"] == ["carrier"]
    assert rep["features"]["carrier"]["reasons"] == ["column 'carrier' is not in the batch"]
    with pytest.raises(ValueError, match=r"reference has no column\(s\) \['dewp'\]"):
        DatasetDriftDetector(numeric=("dewp",)).fit(ref)


def test_reports_from_counts_equal_reports_from_values():
    num = NumericDriftDetector().fit(REF)
    batch = RNG.normal(loc=0.8, size=2000)  # PSI well above 0.2 (the counts path has no KS)
    batch[:30] = np.nan
    by_values = num.score(batch)
    ok = batch[np.isfinite(batch)]
    by_counts = num.score_counts(bin_counts(ok, num.edges_), nulls=30)
    assert by_counts["psi"] == by_values["psi"] and by_counts["null_rate"] == pytest.approx(by_values["null_rate"])
    assert by_counts["status"] == by_values["status"] == "drift"
    cat = CategoricalDriftDetector().fit(CATS)
    b = pd.Series(list(RNG.choice(["AA", "B6", "DL", "UA"], size=500)) + ["ZZ"] * 40 + [None] * 10)
    v, c = cat.score(b), cat.score_counts(b.dropna().value_counts().to_dict(), nulls=10)
    for k in ("js_distance", "chi2_statistic", "new_category_share", "null_rate", "status"):
        assert v[k] == pytest.approx(c[k]) if isinstance(v[k], float) else v[k] == c[k], k
    assert c["new_categories"] == ["ZZ"]
