"""Explain: permutation importance and partial dependence on the original feature names.

Both come from scikit-learn's inspection module (``permutation_importance``,
``partial_dependence``; Breiman 2001, Friedman 2001) applied to a wrapper that takes the
*pre-encoding* features (``month``, ``carrier``, ``temp``...) and encodes them with the
version's FeatureSpec before scoring. So a categorical feature is permuted as one column,
not as its one-hot slots. Importance is the mean drop in test ROC AUC over ``n_repeats``
permutations of each feature, on ``n_rows`` sampled test rows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin

from mlops_ray.config import ExplainConfig
from mlops_ray.errors import NotFittedError
from mlops_ray.preprocess.feature_spec import FeatureSpec

logger = logging.getLogger(__name__)


class DerivedFeatureModel(ClassifierMixin, BaseEstimator):
    """A fitted classifier seen through the feature spec: input is the pre-encoding frame.

    Args:
        estimator: fitted classifier over the encoded matrix (``predict_proba``).
        spec: the FeatureSpec that encodes the frame.
    """

    def __init__(self, estimator=None, spec: FeatureSpec | None = None):
        self.estimator = estimator
        self.spec = spec

    def fit(self, X=None, y=None) -> "DerivedFeatureModel":
        """Nothing to learn (the estimator is already fitted); records the classes."""
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """X: DataFrame (n, features) of pre-encoding features -> array (n, 2)."""
        if not hasattr(self, "classes_"):
            raise NotFittedError("DerivedFeatureModel is not fitted; call fit() first.")
        return self.estimator.predict_proba(self.spec.transform(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


@dataclass(frozen=True)
class ExplainResult:
    """Where explain.json is and the top features by importance."""

    path: str
    top_features: list[str]
    n_rows: int
    cache_hit: bool = False


def explanation(cfg: ExplainConfig, estimator, spec: FeatureSpec, derived: pd.DataFrame, y: np.ndarray) -> dict[str, Any]:
    """Permutation importance for every feature, partial dependence for the ``top_k``.

    Args:
        derived: DataFrame (n, ...) holding the spec's numeric and categorical columns.
        y: int array (n,), 0/1.
    """
    from sklearn.inspection import partial_dependence, permutation_importance

    features = list(spec.numeric) + [c.name for c in spec.categorical]
    X = derived[features].reset_index(drop=True)
    for c in spec.numeric:
        X[c] = pd.to_numeric(X[c], errors="coerce").astype("float64")
    for c in spec.categorical:
        X[c.name] = X[c.name].astype("object").where(X[c.name].notna(), "__missing__")
    model = DerivedFeatureModel(estimator, spec).fit()
    single = len(np.unique(y)) < 2
    scoring = "accuracy" if single else "roc_auc"
    imp = permutation_importance(model, X, y, scoring=scoring, n_repeats=cfg.n_repeats, random_state=cfg.seed)
    order = np.argsort(-imp.importances_mean)
    importance = [{"feature": features[i], "mean": float(imp.importances_mean[i]), "std": float(imp.importances_std[i])}
                  for i in order]
    top = [features[i] for i in order[: cfg.top_k]]
    categorical = {c.name for c in spec.categorical}
    pdp: dict[str, Any] = {}
    for name in top:
        is_cat = name in categorical
        if is_cat:
            values = X[name].value_counts().index[: cfg.grid_resolution * 2]
            custom = {name: np.array(sorted(values, key=str), dtype=object)}
        else:  # grid over the 5th-95th percentiles of the non-null values (sklearn's default range)
            col = X[name].to_numpy(dtype=np.float64)
            lo, hi = np.nanpercentile(col, [5, 95])
            custom = {name: np.unique(np.linspace(lo, hi, cfg.grid_resolution))}
        res = partial_dependence(model, X, [name], kind="average", custom_values=custom,
                                 categorical_features=[name] if is_cat else None, response_method="predict_proba")
        grid = res["grid_values"][0]
        pdp[name] = {"kind": "categorical" if is_cat else "numeric",
                     "grid": [str(g) if is_cat else float(g) for g in grid],
                     "average": [float(v) for v in res["average"][0]]}
    return {"scoring": scoring, "n_rows": int(len(X)), "n_repeats": cfg.n_repeats,
            "permutation_importance": importance, "partial_dependence": pdp,
            "note": "importance = mean drop in the score when one pre-encoding feature is permuted"}


def run_explain(cfg: ExplainConfig, estimator, preprocess_path: str, out_dir: str | Path) -> ExplainResult:
    """Explain the model on a sample of test rows; writes ``explain.json`` into ``out_dir``."""
    from mlops_ray.preprocess.records import RecordTransformer

    transformer = RecordTransformer.from_dir(preprocess_path)
    inputs = list(transformer.spec.inputs)
    test = pd.read_parquet(Path(preprocess_path) / "data" / "test", columns=[*inputs, "label"])
    if len(test) > cfg.n_rows:
        test = test.sample(n=cfg.n_rows, random_state=cfg.seed)
    derived = transformer.derived(test[inputs])
    result = explanation(cfg, estimator, transformer.spec, derived, test["label"].to_numpy())
    out = Path(out_dir) / "explain.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    top = [r["feature"] for r in result["permutation_importance"][: cfg.top_k]]
    logger.info("explain: top features %s", top)
    return ExplainResult(path=str(out), top_features=top, n_rows=result["n_rows"])
