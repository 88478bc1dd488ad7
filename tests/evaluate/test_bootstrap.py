"""The vectorised weighted metrics equal scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as m

from mlops_ray.evaluate.bootstrap import resample_weights, weighted_metrics

NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier")


@pytest.mark.parametrize("ties", [False, True])
def test_unit_weights_equal_sklearn(ties):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1)
    if ties:
        p = np.round(p, 1)
    got = {k: v[0] for k, v in weighted_metrics(y, p, 0.5, np.ones((1, 500)), NAMES).items()}
    pred = (p >= 0.5).astype(int)
    want = {"accuracy": m.accuracy_score(y, pred), "precision": m.precision_score(y, pred),
            "recall": m.recall_score(y, pred), "f1": m.f1_score(y, pred), "roc_auc": m.roc_auc_score(y, p),
            "pr_auc": m.average_precision_score(y, p), "log_loss": m.log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)),
            "brier": m.brier_score_loss(y, p)}
    for k in NAMES:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_count_weights_equal_resampled_rows():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)
    W = resample_weights(300, 3, seed=1)
    got = weighted_metrics(y, p, 0.4, W, ("roc_auc", "pr_auc", "f1"))
    for b in range(3):
        idx = np.repeat(np.arange(300), W[b].astype(int))
        assert got["roc_auc"][b] == pytest.approx(m.roc_auc_score(y[idx], p[idx]), abs=1e-12)
        assert got["pr_auc"][b] == pytest.approx(m.average_precision_score(y[idx], p[idx]), abs=1e-12)
        assert got["f1"][b] == pytest.approx(m.f1_score(y[idx], (p[idx] >= 0.4).astype(int)), abs=1e-12)


def test_single_class_gives_nan_not_error():
    out = weighted_metrics(np.zeros(10, dtype=int), np.linspace(0, 1, 10), 0.5, np.ones((2, 10)), ("roc_auc", "pr_auc"))
    assert np.isnan(out["roc_auc"]).all() and np.isnan(out["pr_auc"]).all()
