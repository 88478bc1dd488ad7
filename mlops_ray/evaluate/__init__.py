"""Evaluate: the best model on the frozen test split, next to two baselines.

Baselines: the majority class (predicts the training prior as probability, so its ROC AUC
is 0.5) and a default scikit-learn ``LogisticRegression`` fit on train. The decision
threshold is chosen on the validation split (``max_f1``: the threshold maximising F1 over
the precision-recall curve's thresholds) and then applied unchanged to test.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlops_ray.config import EvaluateConfig

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")


@dataclass(frozen=True)
class EvaluateResult:
    """Test metrics of the model and the baselines, and the decision threshold."""

    path: str
    threshold: float
    model: dict[str, float]
    baselines: dict[str, dict[str, float]]
    validation_roc_auc: float


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """accuracy, precision, recall, F1 (at ``threshold``) and ROC AUC (threshold-free).

    Args:
        y_true: int array of shape (n,), values 0/1.
        proba: float array of shape (n,), P(label=1).

    Returns:
        Metric name -> value; ROC AUC is NaN when ``y_true`` has a single class.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    pred = (proba >= threshold).astype(int)
    out = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
    }
    out["roc_auc"] = float(roc_auc_score(y_true, proba)) if len(np.unique(y_true)) == 2 else float("nan")
    return out


def threshold_max_f1(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Threshold maximising F1 on (y_true, proba); from sklearn's precision_recall_curve."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_true, proba)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    return float(thresholds[int(np.argmax(f1))]) if len(thresholds) else 0.5


def run_evaluate(cfg: EvaluateConfig, model, preprocess_path: str, out_dir: str | Path, seed: int = 0) -> EvaluateResult:
    """Score the model and the baselines on test; write ``evaluation.json`` into ``out_dir``."""
    from sklearn.linear_model import LogisticRegression

    from mlops_ray.preprocess import load_split

    X_tr, y_tr = load_split(preprocess_path, "train")
    X_va, y_va = load_split(preprocess_path, "validation")
    X_te, y_te = load_split(preprocess_path, "test")
    p_va = model.predict_proba(X_va)[:, 1]
    threshold = threshold_max_f1(y_va, p_va) if cfg.threshold_rule == "max_f1" else cfg.fixed_threshold
    model_metrics = classification_metrics(y_te, model.predict_proba(X_te)[:, 1], threshold)

    prior = float(y_tr.mean())
    majority = classification_metrics(y_te, np.full(len(y_te), prior), 0.5 if prior < 0.5 else prior)
    logreg = LogisticRegression(max_iter=2000, random_state=seed).fit(X_tr, y_tr)
    lr_t = threshold_max_f1(y_va, logreg.predict_proba(X_va)[:, 1]) if cfg.threshold_rule == "max_f1" \
        else cfg.fixed_threshold
    lr_metrics = classification_metrics(y_te, logreg.predict_proba(X_te)[:, 1], lr_t)

    from sklearn.metrics import roc_auc_score

    result = EvaluateResult(path=str(Path(out_dir) / "evaluation.json"), threshold=threshold, model=model_metrics,
                            baselines={"majority_class": majority, "logistic_regression": lr_metrics},
                            validation_roc_auc=float(roc_auc_score(y_va, p_va)))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    Path(result.path).write_text(json.dumps({
        "threshold": threshold, "threshold_rule": cfg.threshold_rule, "test": model_metrics,
        "baselines": result.baselines, "validation_roc_auc": result.validation_roc_auc,
        "rows": {"train": len(y_tr), "validation": len(y_va), "test": len(y_te)}}, indent=2))
    logger.info("evaluate: test %s; baselines %s", model_metrics, result.baselines)
    return result
