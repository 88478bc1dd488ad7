"""Vectorised bootstrap of classification metrics through resampling weights.

A bootstrap resample of n rows drawn with replacement is the same as weighting each row by
how many times it was drawn (multinomial counts). Every metric here accepts a weight matrix
W of shape (B, n) and returns B values at once, after one sort of the scores; ties between
scores are handled as scikit-learn does (ROC AUC counts a tie as 1/2, average precision steps
at distinct thresholds). With W = 1 the values equal scikit-learn's to float rounding
(tests/evaluate/test_bootstrap.py).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-15


def resample_weights(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """Counts matrix (n_bootstrap, n): row b counts each row's draws in resample b."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_bootstrap)]).astype(np.float64)


def _ranked(y: np.ndarray, p: np.ndarray, W: np.ndarray):
    order = np.argsort(-p, kind="mergesort")
    ps, ys, Ws = p[order], y[order].astype(np.float64), W[:, order]
    ends = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]  # last index of each tie group
    tp = np.cumsum(Ws * ys, axis=1)[:, ends]
    fp = np.cumsum(Ws * (1 - ys), axis=1)[:, ends]
    return tp, fp


def weighted_roc_auc(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC AUC per weight row (Mann-Whitney; ties count 1/2); NaN where a class has no weight."""
    tp, fp = _ranked(y, p, W)
    dtp = np.diff(tp, axis=1, prepend=0.0)
    dfp = np.diff(fp, axis=1, prepend=0.0)
    fp_before = fp - dfp
    pos, neg = tp[:, -1], fp[:, -1]
    # positives ranked above negatives: each positive group beats the negatives *after* it
    wins = np.sum(dtp * (neg[:, None] - fp_before - dfp) + 0.5 * dtp * dfp, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((pos > 0) & (neg > 0), wins / (pos * neg), np.nan)


def weighted_average_precision(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average precision (PR AUC as sklearn's average_precision_score) per weight row."""
    tp, fp = _ranked(y, p, W)
    dtp = np.diff(tp, axis=1, prepend=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        pos = tp[:, -1]
        return np.where(pos > 0, np.sum(dtp * precision, axis=1) / pos, np.nan)


def weighted_threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float, W: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, precision, recall, F1 at ``threshold``, log loss and Brier score per weight row."""
    pred = (p >= threshold).astype(np.float64)
    yf = y.astype(np.float64)
    total = W.sum(axis=1)
    tp = W @ (pred * yf)
    fp = W @ (pred * (1 - yf))
    fn = W @ ((1 - pred) * yf)
    tn = total - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    pc = np.clip(p, EPS, 1 - EPS)
    ll = -(yf * np.log(pc) + (1 - yf) * np.log(1 - pc))
    return {"accuracy": (tp + tn) / total, "precision": precision, "recall": recall, "f1": f1,
            "log_loss": (W @ ll) / total, "brier": (W @ (p - yf) ** 2) / total}


def weighted_metrics(y: np.ndarray, p: np.ndarray, threshold: float, W: np.ndarray,
                     names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every metric in ``names`` per weight row (NaN where undefined)."""
    out: dict[str, np.ndarray] = {}
    if any(n in names for n in ("accuracy", "precision", "recall", "f1", "log_loss", "brier")):
        out.update(weighted_threshold_metrics(y, p, threshold, W))
    if "roc_auc" in names:
        out["roc_auc"] = weighted_roc_auc(y, p, W)
    if "pr_auc" in names:
        out["pr_auc"] = weighted_average_precision(y, p, W)
    return {k: out[k] for k in names}
