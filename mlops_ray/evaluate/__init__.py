"""Evaluate: the best model on the frozen test split, with bootstrap intervals, beside two baselines.

Metrics (scikit-learn): accuracy, precision, recall, F1 (at the decision threshold), ROC AUC,
PR AUC (average precision), log loss and Brier score; each with a percentile bootstrap
interval over ``n_bootstrap`` resamples of the test rows (Efron & Tibshirani, 1993). The
threshold is chosen on the validation split (``max_f1``, ``target_precision`` or ``fixed``)
and applied unchanged to test. Also: the confusion matrix, a calibration curve
(``sklearn.calibration.calibration_curve``), ROC/PR curves and per-slice metrics.

Baselines: the majority class (predicts the training prior, so its ROC AUC is 0.5) and a
default ``LogisticRegression`` fit on train.

A metric that a sample cannot define (ROC AUC of a single-class label) is reported as
``None`` with the reason in ``undefined``, never a crash.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlops_ray.config import EvaluateConfig

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier")
RANKING = frozenset({"roc_auc", "pr_auc"})  # need both classes


@dataclass(frozen=True)
class EvaluateResult:
    """Test metrics of the model (with intervals), baselines, threshold, curves and slices.

    Attributes:
        model: metric -> value on test (None when undefined).
        intervals: metric -> [low, high] at ``confidence``.
        undefined: metric -> why it is undefined.
        confusion: {"tn", "fp", "fn", "tp"} at ``threshold``.
        curves: ``roc`` (fpr, tpr), ``pr`` (recall, precision), ``calibration`` (prob_pred, prob_true),
            each at most 200 points.
        slices: one row per (column, value) with n, metric, interval, flagged and why.
        families: family -> test ROC AUC / PR AUC of that family's best trial (beside the chosen model).
    """

    path: str
    threshold: float
    model: dict[str, float | None]
    baselines: dict[str, dict[str, float | None]]
    validation_roc_auc: float | None
    families: dict[str, dict[str, float | None]] = field(default_factory=dict)
    intervals: dict[str, list[float] | None] = field(default_factory=dict)
    undefined: dict[str, str] = field(default_factory=dict)
    confusion: dict[str, int] = field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    slices: list[dict[str, Any]] = field(default_factory=list)
    threshold_rule: str = "max_f1"
    confidence: float = 0.95
    rows: dict[str, int] = field(default_factory=dict)
    cache_hit: bool = False


def _single_class_reason(y: np.ndarray) -> str | None:
    classes = np.unique(y)
    if len(classes) < 2:
        return f"only one class ({', '.join(str(int(c)) for c in classes) or 'none'}) in {len(y)} labels"
    return None


def metric_value(name: str, y: np.ndarray, proba: np.ndarray, threshold: float) -> float | None:
    """One metric; None when undefined (ranking metrics on a single-class label).

    Args:
        y: int array (n,), 0/1. proba: float array (n,), P(label=1).
    """
    from sklearn import metrics as m

    if name in RANKING and _single_class_reason(y):
        return None
    pred = (proba >= threshold).astype(int)
    if name == "accuracy":
        return float(m.accuracy_score(y, pred))
    if name == "precision":
        return float(m.precision_score(y, pred, zero_division=0))
    if name == "recall":
        return float(m.recall_score(y, pred, zero_division=0))
    if name == "f1":
        return float(m.f1_score(y, pred, zero_division=0))
    if name == "roc_auc":
        return float(m.roc_auc_score(y, proba))
    if name == "pr_auc":
        return float(m.average_precision_score(y, proba))
    if name == "log_loss":
        return float(m.log_loss(y, np.clip(proba, 1e-15, 1 - 1e-15), labels=[0, 1]))
    if name == "brier":
        return float(m.brier_score_loss(y, proba, pos_label=1))
    raise ValueError(f"unknown metric '{name}'; expected one of {METRICS}")


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float,
                           names: tuple[str, ...] = METRICS) -> dict[str, float | None]:
    """Every metric in ``names`` (None where undefined)."""
    return {n: metric_value(n, y_true, proba, threshold) for n in names}


def bootstrap_intervals(y: np.ndarray, proba: np.ndarray, threshold: float, names: tuple[str, ...], n_bootstrap: int,
                        confidence: float, seed: int) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals over ``n_bootstrap`` resamples of the rows (with replacement).

    Resamples where a metric is undefined (one class drawn) are skipped for that metric; a
    metric defined in fewer than half the resamples gets None. Vectorised through resampling
    weights (:mod:`mlops_ray.evaluate.bootstrap`).
    """
    from mlops_ray.evaluate.bootstrap import resample_weights, weighted_metrics

    W = resample_weights(len(y), n_bootstrap, seed)
    draws = weighted_metrics(np.asarray(y), np.asarray(proba, dtype=np.float64), threshold, W, names)
    alpha = (1 - confidence) / 2
    out: dict[str, list[float] | None] = {}
    for k, vals in draws.items():
        vals = vals[np.isfinite(vals)]
        out[k] = ([float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))]
                  if len(vals) >= n_bootstrap / 2 else None)
    return out


def choose_threshold(cfg: EvaluateConfig, y_val: np.ndarray, p_val: np.ndarray) -> float:
    """Decision threshold from the validation split.

    ``max_f1``: the precision-recall-curve threshold with the highest F1. ``target_precision``:
    the lowest threshold whose precision reaches ``target_precision`` (the highest-recall such
    point); if none does, the threshold of maximal precision. ``fixed``: ``fixed_threshold``.
    """
    from sklearn.metrics import precision_recall_curve

    if cfg.threshold_rule == "fixed" or _single_class_reason(y_val):
        return cfg.fixed_threshold
    precision, recall, thresholds = precision_recall_curve(y_val, p_val)
    precision, recall = precision[:-1], recall[:-1]
    if cfg.threshold_rule == "max_f1":
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
        return float(thresholds[int(np.argmax(f1))])
    ok = np.flatnonzero(precision >= cfg.target_precision)
    return float(thresholds[ok[0]] if len(ok) else thresholds[int(np.argmax(precision))])


def _downsample(*arrays: np.ndarray, points: int = 200) -> list[list[float]]:
    n = len(arrays[0])
    idx = np.unique(np.linspace(0, n - 1, min(points, n)).astype(int)) if n else np.array([], dtype=int)
    return [[round(float(v), 6) for v in a[idx]] for a in arrays]


def curves(y: np.ndarray, proba: np.ndarray, bins: int) -> dict[str, dict[str, list[float]]]:
    """ROC, PR and calibration curves (at most 200 points each); empty where undefined."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    out: dict[str, dict[str, list[float]]] = {}
    if not _single_class_reason(y):
        fpr, tpr, _ = roc_curve(y, proba)
        out["roc"] = dict(zip(("fpr", "tpr"), _downsample(fpr, tpr)))
        precision, recall, _ = precision_recall_curve(y, proba)
        out["pr"] = dict(zip(("recall", "precision"), _downsample(recall[::-1], precision[::-1])))
    prob_true, prob_pred = calibration_curve(y, proba, n_bins=bins, strategy="uniform")
    out["calibration"] = {"prob_pred": [float(v) for v in prob_pred], "prob_true": [float(v) for v in prob_true]}
    return out


def slice_metrics(cfg: EvaluateConfig, frame, y: np.ndarray, proba: np.ndarray, threshold: float,
                  overall: float | None) -> list[dict[str, Any]]:
    """Per-slice metric with a bootstrap interval for each value of each ``slice_columns`` column.

    A slice is flagged when its interval's upper bound is below ``overall - slice_margin``.
    Slices smaller than ``min_slice_size`` or with one class are listed with the reason, unscored.
    """
    rows: list[dict[str, Any]] = []
    n_boot = max(20, cfg.n_bootstrap // 2)
    for col in cfg.slice_columns:
        if col not in frame:
            rows.append({"column": col, "value": None, "n": 0, "metric": None, "interval": None, "flagged": False,
                         "note": f"column '{col}' is not in the test data"})
            continue
        values = frame[col].astype("object").where(frame[col].notna(), "<null>").to_numpy()
        for v in sorted(set(values), key=str):
            mask = values == v
            n = int(mask.sum())
            row: dict[str, Any] = {"column": col, "value": str(v), "n": n, "positives": int(y[mask].sum()),
                                   "metric": None, "interval": None, "flagged": False, "note": ""}
            why = _single_class_reason(y[mask]) if cfg.slice_metric in RANKING else None
            if n < cfg.min_slice_size:
                row["note"] = f"fewer than {cfg.min_slice_size} rows"
            elif why:
                row["note"] = f"{cfg.slice_metric} undefined: {why}"
            else:
                row["metric"] = metric_value(cfg.slice_metric, y[mask], proba[mask], threshold)
                row["interval"] = bootstrap_intervals(y[mask], proba[mask], threshold, (cfg.slice_metric,), n_boot,
                                                      cfg.confidence, cfg.seed)[cfg.slice_metric]
                if overall is not None and row["interval"] and row["interval"][1] < overall - cfg.slice_margin:
                    row["flagged"] = True
                    row["note"] = (f"upper bound {row['interval'][1]:.3f} < overall {overall:.3f} - "
                                   f"margin {cfg.slice_margin}")
            rows.append(row)
    return rows


def evaluate_predictions(cfg: EvaluateConfig, y_te: np.ndarray, p_te: np.ndarray, threshold: float,
                         frame=None) -> dict[str, Any]:
    """Metrics, intervals, undefined reasons, confusion matrix, curves and slices for test predictions."""
    from sklearn.metrics import confusion_matrix

    model = classification_metrics(y_te, p_te, threshold)
    undefined = {k: f"{k} is undefined: {_single_class_reason(y_te)}" for k, v in model.items() if v is None}
    if undefined:
        logger.warning("evaluate: %s", "; ".join(undefined.values()))
    tn, fp, fn, tp = confusion_matrix(y_te, (p_te >= threshold).astype(int), labels=[0, 1]).ravel()
    return {
        "model": model,
        "intervals": bootstrap_intervals(y_te, p_te, threshold, METRICS, cfg.n_bootstrap, cfg.confidence, cfg.seed),
        "undefined": undefined,
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "curves": curves(y_te, p_te, cfg.calibration_bins),
        "slices": slice_metrics(cfg, frame, y_te, p_te, threshold, model.get(cfg.slice_metric))
        if frame is not None else [],
    }


def run_evaluate(cfg: EvaluateConfig, model, preprocess_path: str, out_dir: str | Path, seed: int = 0,
                 family_models: dict[str, str] | None = None) -> EvaluateResult:
    """Score the model and the baselines on test; write ``evaluation.json`` into ``out_dir``.

    Args:
        model: fitted classifier with ``predict_proba`` on the feature matrix.
        preprocess_path: output folder of preprocess (splits with features, label and raw columns).
        family_models: family -> model file of that family's best trial (from tune); each is scored
            on test too (``families``: test ROC AUC and PR AUC beside the chosen model's).
    """
    import pyarrow.parquet as pq
    from sklearn.linear_model import LogisticRegression

    from mlops_ray.preprocess import load_split

    X_tr, y_tr = load_split(preprocess_path, "train")
    X_va, y_va = load_split(preprocess_path, "validation")
    X_te, y_te = load_split(preprocess_path, "test")
    test_frame = pq.read_table(Path(preprocess_path) / "data" / "test",
                               columns=[c for c in cfg.slice_columns if c != "label"]).to_pandas() \
        if cfg.slice_columns else None
    p_va = model.predict_proba(X_va)[:, 1]
    threshold = choose_threshold(cfg, y_va, p_va)
    p_te = model.predict_proba(X_te)[:, 1]
    detail = evaluate_predictions(cfg, y_te, p_te, threshold, test_frame)

    prior = float(y_tr.mean())
    names = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "log_loss", "brier")
    majority = classification_metrics(y_te, np.full(len(y_te), prior), 0.5 if prior < 0.5 else prior, names)
    logreg = LogisticRegression(max_iter=2000, random_state=seed).fit(X_tr, y_tr)
    lr_t = choose_threshold(cfg, y_va, logreg.predict_proba(X_va)[:, 1])
    lr_metrics = classification_metrics(y_te, logreg.predict_proba(X_te)[:, 1], lr_t, names)

    val_auc = metric_value("roc_auc", y_va, p_va, threshold)
    families = {}
    if family_models:
        from mlops_ray.tune import load_model

        for fam, path in sorted(family_models.items()):
            p = load_model(path).predict_proba(X_te)[:, 1]
            families[fam] = {"test_roc_auc": metric_value("roc_auc", y_te, p, 0.5),
                             "test_pr_auc": metric_value("pr_auc", y_te, p, 0.5)}
    result = EvaluateResult(families=families, path=str(Path(out_dir) / "evaluation.json"), threshold=threshold,
                            baselines={"majority_class": majority, "logistic_regression": lr_metrics},
                            validation_roc_auc=val_auc, threshold_rule=cfg.threshold_rule, confidence=cfg.confidence,
                            rows={"train": len(y_tr), "validation": len(y_va), "test": len(y_te)}, **detail)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    from dataclasses import asdict

    Path(result.path).write_text(json.dumps(asdict(result), indent=2))
    flagged = [f"{s['column']}={s['value']}" for s in result.slices if s["flagged"]]
    logger.info("evaluate: test %s; threshold %.3f; flagged slices %s", result.model, threshold, flagged or "none")
    return result
