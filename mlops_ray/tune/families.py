"""Model families the search can try, and how a sampled config becomes an estimator.

Search spaces come from ``tune.search_space`` in the config; each family's sampled
hyperparameters are passed to the scikit-learn constructor unchanged.
"""

from __future__ import annotations

from typing import Any

from mlops_ray.config import Distribution


def build_estimator(family: str, params: dict[str, Any], seed: int, n_jobs: int = 1):
    """A scikit-learn classifier for ``family`` with ``params``.

    Raises:
        ValueError: unknown family (names the known ones).
    """
    if family == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000, random_state=seed, **params)
    if family == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(random_state=seed, early_stopping=False, **params)
    if family == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **params)
    raise ValueError(f"unknown model family '{family}'; expected logistic_regression, "
                     "hist_gradient_boosting or random_forest")


def to_tune_domain(d: Distribution):
    """One :class:`Distribution` as a Ray Tune search-space domain (or a constant)."""
    from ray import tune

    if d.distribution == "fixed":
        return d.value
    if d.distribution == "uniform":
        return tune.uniform(d.low, d.high)
    if d.distribution == "loguniform":
        return tune.loguniform(d.low, d.high)
    if d.distribution == "randint":
        return tune.randint(int(d.low), int(d.high) + 1)  # inclusive upper bound in the config
    return tune.choice(list(d.values or ()))


def to_param_space(search_space: dict[str, dict[str, Distribution]]) -> dict[str, Any]:
    """Tune ``param_space``: a grid over families, each family's own sampled sub-dict."""
    from ray import tune

    space: dict[str, Any] = {"family": tune.grid_search(sorted(search_space))}
    for fam, params in search_space.items():
        space[fam] = {name: to_tune_domain(d) for name, d in params.items()}
    return space
