"""Data drift detectors: estimator-style, ``fit(reference) -> self``, ``score(batch) -> report``.

Numeric features: the Population Stability Index over bins cut at the reference quantiles,
and the two-sample Kolmogorov–Smirnov test. Categorical features: Pearson's chi-squared test of
the batch counts against the reference frequencies, the Jensen–Shannon distance, and the share of
batch rows whose category the reference never saw. Every feature: the change in null rate.

Reports never raise on a difficult batch: an empty window or one below ``min_rows`` non-null
values is ``insufficient_data`` (the null-rate check still runs when the window has rows), an
all-null column is a null-rate change (dropping nulls must not hide it), new categories are
counted, a column missing from the batch is ``missing``.

Definitions and thresholds:
- PSI = sum_i (q_i - p_i) * ln(q_i / p_i), p = reference shares, q = batch shares per bin; an
  empty bin's share is floored at ``eps`` = 1e-4 before the logarithm. Rule of thumb (Siddiqi,
  *Credit Risk Scorecards*, 2006; Yurdakul, *Statistical properties of the population stability
  index*, 2018): < 0.1 stable, 0.1–0.25 moderate, > 0.25 major; the default drift threshold is 0.2.
- KS: ``scipy.stats.ks_2samp`` (two-sided, exact/asymptotic as SciPy chooses); drift when the
  p-value is below ``ks_alpha`` (0.05) *and* the statistic exceeds ``ks_min_statistic`` (0.1),
  because on large windows the p-value alone flags negligible differences.
- Chi-squared: ``scipy.stats.chisquare`` of the batch counts over the reference categories (plus
  one bucket for unseen ones) against the reference shares times the batch size, shares floored at
  ``eps``; drift when p < ``chi2_alpha`` and the JS distance exceeds ``js_threshold``.
- Jensen–Shannon distance: ``scipy.spatial.distance.jensenshannon`` with base 2 (in [0, 1]);
  drift above ``js_threshold`` (0.1).
- Null-rate change: |batch null share - reference null share|; drift above ``null_rate_threshold``
  (0.05).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-4
UNSEEN = "__unseen__"


def psi(reference_counts, batch_counts, eps: float = EPS) -> float:
    """Population Stability Index of two histograms over the same bins (see the module docstring).

    Args:
        reference_counts, batch_counts: counts per bin, same length k >= 1.

    Raises:
        ValueError: lengths differ, or a histogram is empty.
    """
    p = np.asarray(reference_counts, dtype=float)
    q = np.asarray(batch_counts, dtype=float)
    if p.shape != q.shape:
        raise ValueError(f"PSI needs the same bins on both sides; got {p.size} reference and {q.size} batch bins.")
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("PSI of an empty histogram is undefined.")
    p = np.maximum(p / p.sum(), eps)
    q = np.maximum(q / q.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` (non-null) in the bins cut at interior ``edges``: k edges make k + 1 bins.

    Bin i holds edges[i-1] < x <= edges[i] (right-closed; the first bin is (-inf, edges[0]], the
    last (edges[-1], +inf)), so values beyond the reference's range fall in the outer bins.
    """
    idx = np.searchsorted(np.asarray(edges, dtype=float), np.asarray(values, dtype=float), side="left")
    return np.bincount(idx, minlength=len(edges) + 1)


def _numeric(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)


class _Checks:
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_reference_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit(reference) first.")

    def _null_rate(self, rep: dict[str, Any], rows: int, non_null: int) -> None:
        """Null rate and its change against the reference into ``rep`` (a reason when beyond the threshold)."""
        rep["null_rate"] = float(1 - non_null / rows)
        rep["null_rate_change"] = rep["null_rate"] - self.reference_null_rate_
        if abs(rep["null_rate_change"]) > self.null_rate_threshold:
            rep["reasons"].append(f"null rate {rep['null_rate']:.3f} vs {self.reference_null_rate_:.3f} in the "
                                  f"reference (change > {self.null_rate_threshold})")

    def _too_few(self, rep: dict[str, Any], non_null: int, skipped: str) -> bool:
        """Mark ``rep`` when fewer than ``min_rows`` non-null values; True when it was."""
        if non_null >= self.min_rows:
            return False
        rep["status"] = "drift" if rep["reasons"] else "insufficient_data"
        rep["reasons"].append(f"{non_null} non-null values (< min_rows {self.min_rows}): {skipped} not computed")
        return True


class NumericDriftDetector(_Checks):
    """PSI + KS + null-rate change for one numeric feature.

    Args:
        n_bins: PSI bins, cut at the reference's quantiles 1/n_bins, ..., (n_bins-1)/n_bins
            (duplicate edges of a discrete feature are merged, so there may be fewer bins).
        psi_threshold, ks_alpha, ks_min_statistic, null_rate_threshold: drift thresholds (module docstring).
        min_rows: fewer non-null batch values than this is ``insufficient_data`` for PSI and KS.
        max_reference_sample: reference values kept for KS (a seeded uniform subsample).
    """

    def __init__(self, n_bins: int = 10, psi_threshold: float = 0.2, ks_alpha: float = 0.05,
                 ks_min_statistic: float = 0.1, null_rate_threshold: float = 0.05, min_rows: int = 30,
                 max_reference_sample: int = 20_000, seed: int = 0):
        self.n_bins = n_bins
        self.psi_threshold = psi_threshold
        self.ks_alpha = ks_alpha
        self.ks_min_statistic = ks_min_statistic
        self.null_rate_threshold = null_rate_threshold
        self.min_rows = min_rows
        self.max_reference_sample = max_reference_sample
        self.seed = seed

    def fit(self, reference) -> "NumericDriftDetector":
        """Learn bins, counts, null rate and a KS sample from ``reference`` (array-like (n,); NaN/None = null).

        Raises:
            ValueError: the reference has no non-null value.
        """
        x = _numeric(reference)
        ok = x[np.isfinite(x)]
        if ok.size == 0:
            raise ValueError("the reference has no non-null values; a numeric drift reference needs some.")
        edges = np.unique(np.quantile(ok, np.arange(1, self.n_bins) / self.n_bins, method="inverted_cdf"))
        return self.fit_binned(edges, bin_counts(ok, edges), null_count=int(x.size - ok.size), sample=ok)

    def fit_binned(self, edges, counts, null_count: int, sample=None) -> "NumericDriftDetector":
        """Fit from stored statistics (the dataset manifest's drift reference) instead of raw values.

        Args:
            edges: interior bin edges (k,), increasing; counts: reference counts per bin (k + 1,).
            null_count: reference nulls. sample: reference values for KS (None: KS not computed).
        """
        self.edges_ = np.asarray(edges, dtype=float)
        self.reference_counts_ = np.asarray(counts, dtype=float)
        if self.reference_counts_.size != self.edges_.size + 1:
            raise ValueError(f"{self.edges_.size} edges need {self.edges_.size + 1} bin counts; "
                             f"got {self.reference_counts_.size}.")
        non_null = float(self.reference_counts_.sum())
        self.n_reference_ = int(non_null + null_count)
        self.reference_null_rate_ = null_count / self.n_reference_ if self.n_reference_ else 0.0
        self.sample_ = None
        if sample is not None:
            s = np.asarray(sample, dtype=float)
            if s.size > self.max_reference_sample:
                s = np.random.default_rng(self.seed).choice(s, self.max_reference_sample, replace=False)
            self.sample_ = np.sort(s)
        return self

    def score(self, batch) -> dict[str, Any]:
        """Report for ``batch`` (array-like (n,)): rows, null rate and change, PSI, KS, status and reasons."""
        from scipy.stats import ks_2samp

        self._check_fitted()
        x = _numeric(batch) if batch is not None else np.array([], dtype=float)
        ok = x[np.isfinite(x)]
        rep: dict[str, Any] = {"kind": "numeric", "rows": int(x.size), "non_null": int(ok.size), "psi": None,
                               "ks_statistic": None, "ks_pvalue": None, "reference_null_rate": self.reference_null_rate_,
                               "null_rate": None, "null_rate_change": None, "reasons": []}
        if x.size == 0:
            rep["status"] = "insufficient_data"
            rep["reasons"].append("empty window")
            return rep
        self._null_rate(rep, x.size, ok.size)
        if self._too_few(rep, ok.size, "PSI and KS"):
            return rep
        rep["psi"] = psi(self.reference_counts_, bin_counts(ok, self.edges_))
        if rep["psi"] > self.psi_threshold:
            rep["reasons"].append(f"PSI {rep['psi']:.3f} > {self.psi_threshold}")
        if self.sample_ is not None and self.sample_.size:
            ks = ks_2samp(self.sample_, ok)
            rep["ks_statistic"], rep["ks_pvalue"] = float(ks.statistic), float(ks.pvalue)
            if ks.pvalue < self.ks_alpha and ks.statistic > self.ks_min_statistic:
                rep["reasons"].append(f"KS statistic {ks.statistic:.3f} (p = {ks.pvalue:.2g})")
        rep["status"] = "drift" if rep["reasons"] else "ok"
        return rep


    def score_counts(self, counts, nulls: int) -> dict[str, Any]:
        """Report from a batch already binned with this detector's edges (e.g. counted on Spark): PSI and nulls, no KS.

        Args:
            counts: batch rows per bin (k + 1,), the :func:`bin_counts` convention. nulls: batch nulls.
        """
        self._check_fitted()
        c = np.asarray(counts, dtype=float)
        if c.size != self.reference_counts_.size:
            raise ValueError(f"expected {self.reference_counts_.size} bin counts; got {c.size}.")
        rows, non_null = int(c.sum() + nulls), int(c.sum())
        rep: dict[str, Any] = {"kind": "numeric", "rows": rows, "non_null": non_null, "psi": None, "ks_statistic": None,
                               "ks_pvalue": None, "reference_null_rate": self.reference_null_rate_, "null_rate": None,
                               "null_rate_change": None, "reasons": []}
        if rows == 0:
            return {**rep, "status": "insufficient_data", "reasons": ["empty window"]}
        self._null_rate(rep, rows, non_null)
        if self._too_few(rep, non_null, "PSI"):
            return rep
        rep["psi"] = psi(self.reference_counts_, c)
        if rep["psi"] > self.psi_threshold:
            rep["reasons"].append(f"PSI {rep['psi']:.3f} > {self.psi_threshold}")
        rep["status"] = "drift" if rep["reasons"] else "ok"
        return rep


class CategoricalDriftDetector(_Checks):
    """Chi-squared + Jensen–Shannon distance + unseen-category share + null-rate change for one feature.

    Args:
        chi2_alpha, js_threshold, new_category_threshold, null_rate_threshold: drift thresholds
            (module docstring; a share of unseen categories above ``new_category_threshold``,
            default 0.05, is drift).
        min_rows: fewer non-null batch values than this is ``insufficient_data`` for the tests.
    """

    def __init__(self, chi2_alpha: float = 0.05, js_threshold: float = 0.1, new_category_threshold: float = 0.05,
                 null_rate_threshold: float = 0.05, min_rows: int = 30):
        self.chi2_alpha = chi2_alpha
        self.js_threshold = js_threshold
        self.new_category_threshold = new_category_threshold
        self.null_rate_threshold = null_rate_threshold
        self.min_rows = min_rows

    def fit(self, reference) -> "CategoricalDriftDetector":
        """Learn category counts and the null rate from ``reference`` (array-like (n,); None/NaN = null)."""
        s = pd.Series(reference, dtype=object)
        nulls = int(s.isna().sum())
        counts = s.dropna().astype(str).value_counts()
        return self.fit_counts(dict(counts.items()), null_count=nulls)

    def fit_counts(self, counts: dict[str, int], null_count: int) -> "CategoricalDriftDetector":
        """Fit from stored category counts (the dataset manifest's drift reference).

        Raises:
            ValueError: no category has a count.
        """
        if not counts or sum(counts.values()) <= 0:
            raise ValueError("the reference has no non-null categories; a categorical drift reference needs some.")
        self.categories_ = sorted(str(k) for k in counts)
        self.reference_counts_ = np.array([float(counts[k]) for k in sorted(counts, key=str)])
        self.n_reference_ = int(self.reference_counts_.sum() + null_count)
        self.reference_null_rate_ = null_count / self.n_reference_
        return self

    def score(self, batch) -> dict[str, Any]:
        """Report for ``batch`` (array-like (n,)): null rate and change, unseen share, chi-squared, JS distance."""
        self._check_fitted()
        s = pd.Series(batch if batch is not None else [], dtype=object)
        ok = s.dropna().astype(str)
        rep: dict[str, Any] = {"kind": "categorical", "rows": int(s.size), "non_null": int(ok.size),
                               "reference_null_rate": self.reference_null_rate_, "null_rate": None,
                               "null_rate_change": None, "new_category_share": None, "new_categories": [],
                               "chi2_statistic": None, "chi2_pvalue": None, "js_distance": None, "psi": None,
                               "reasons": []}
        if s.size == 0:
            rep["status"] = "insufficient_data"
            rep["reasons"].append("empty window")
            return rep
        self._null_rate(rep, s.size, ok.size)
        if ok.size:
            known = ok.isin(self.categories_)
            rep["new_category_share"] = float(1 - known.mean())
            rep["new_categories"] = sorted(ok[~known].unique().tolist())[:20]
            if rep["new_category_share"] > self.new_category_threshold:
                rep["reasons"].append(f"{rep['new_category_share']:.3f} of rows have categories the reference never "
                                      f"saw (> {self.new_category_threshold})")
        if self._too_few(rep, ok.size, "tests"):
            return rep
        vc = ok.value_counts()
        self._tests(rep, np.array([float(vc.get(c, 0)) for c in self.categories_]
                                  + [float((~ok.isin(self.categories_)).sum())]))
        rep["status"] = "drift" if rep["reasons"] else "ok"
        return rep


    def _tests(self, rep: dict[str, Any], observed: np.ndarray) -> None:
        """Chi-squared and JS distance of ``observed`` (categories_ then one unseen bucket) into ``rep``."""
        from scipy.spatial.distance import jensenshannon
        from scipy.stats import chisquare

        ref = np.append(self.reference_counts_, 0.0)
        p = np.maximum(ref / ref.sum(), EPS)
        p = p / p.sum()
        chi = chisquare(observed, p * observed.sum())
        rep["chi2_statistic"], rep["chi2_pvalue"] = float(chi.statistic), float(chi.pvalue)
        rep["js_distance"] = float(jensenshannon(ref / ref.sum(), observed / observed.sum(), base=2))
        rep["psi"] = psi(ref, observed)  # over the categories plus the unseen bucket, for comparison with numerics
        if rep["js_distance"] > self.js_threshold and chi.pvalue < self.chi2_alpha:
            rep["reasons"].append(f"Jensen-Shannon distance {rep['js_distance']:.3f} > {self.js_threshold} "
                                  f"(chi-squared p = {chi.pvalue:.2g})")

    def score_counts(self, counts: dict[str, int], nulls: int) -> dict[str, Any]:
        """Report from batch category counts (e.g. counted on Spark): keys outside the reference count as unseen."""
        self._check_fitted()
        known = {c: int(counts.get(c, 0)) for c in self.categories_}
        unseen = {str(k): int(v) for k, v in counts.items() if str(k) not in known and v}
        non_null = sum(known.values()) + sum(unseen.values())
        rows = non_null + int(nulls)
        rep: dict[str, Any] = {"kind": "categorical", "rows": rows, "non_null": non_null,
                               "reference_null_rate": self.reference_null_rate_, "null_rate": None,
                               "null_rate_change": None, "new_category_share": None, "new_categories": [],
                               "chi2_statistic": None, "chi2_pvalue": None, "js_distance": None, "psi": None,
                               "reasons": []}
        if rows == 0:
            return {**rep, "status": "insufficient_data", "reasons": ["empty window"]}
        self._null_rate(rep, rows, non_null)
        if non_null:
            rep["new_category_share"] = sum(unseen.values()) / non_null
            rep["new_categories"] = sorted(unseen)[:20]
            if rep["new_category_share"] > self.new_category_threshold:
                rep["reasons"].append(f"{rep['new_category_share']:.3f} of rows have categories the reference never "
                                      f"saw (> {self.new_category_threshold})")
        if self._too_few(rep, non_null, "tests"):
            return rep
        self._tests(rep, np.array([float(known[c]) for c in self.categories_] + [float(sum(unseen.values()))]))
        rep["status"] = "drift" if rep["reasons"] else "ok"
        return rep


class DatasetDriftDetector(_Checks):
    """One detector per feature; ``score`` returns a per-feature report plus the drifted features.

    Args:
        numeric, categorical: feature names of each kind.
        numeric_params, categorical_params: keyword arguments of the per-feature detectors.
    """

    def __init__(self, numeric: tuple[str, ...] = (), categorical: tuple[str, ...] = (),
                 numeric_params: dict[str, Any] | None = None, categorical_params: dict[str, Any] | None = None):
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.numeric_params = numeric_params
        self.categorical_params = categorical_params

    def fit(self, reference: pd.DataFrame) -> "DatasetDriftDetector":
        """Fit every feature on ``reference`` (DataFrame with the features as columns).

        Raises:
            ValueError: a feature is not a column of the reference (names it and the columns there are).
        """
        missing = [c for c in self.numeric + self.categorical if c not in reference.columns]
        if missing:
            raise ValueError(f"reference has no column(s) {missing}; it has {sorted(reference.columns)}.")
        self.detectors_: dict[str, Any] = {}
        for c in self.numeric:
            self.detectors_[c] = NumericDriftDetector(**(self.numeric_params or {})).fit(reference[c])
        for c in self.categorical:
            self.detectors_[c] = CategoricalDriftDetector(**(self.categorical_params or {})).fit(reference[c])
        self.n_reference_ = len(reference)
        return self

    def score(self, batch: pd.DataFrame) -> dict[str, Any]:
        """``{"rows", "features": {name: report}, "drifted": [names], "missing": [names]}``."""
        self._check_fitted()
        features: dict[str, Any] = {}
        for name, det in self.detectors_.items():
            if batch is None or name not in batch.columns:
                features[name] = {"kind": "numeric" if name in self.numeric else "categorical", "status": "missing",
                                  "reasons": [f"column '{name}' is not in the batch"]}
            else:
                features[name] = det.score(batch[name])
        rows = 0 if batch is None else len(batch)
        return {"rows": rows, "features": features,
                "drifted": sorted(k for k, v in features.items() if v["status"] == "drift"),
                "missing": sorted(k for k, v in features.items() if v["status"] == "missing"),
                "insufficient": sorted(k for k, v in features.items() if v["status"] == "insufficient_data")}


def nan_to_none(report: Any) -> Any:
    """The report with NaN/inf floats as None (strict JSON)."""
    if isinstance(report, dict):
        return {k: nan_to_none(v) for k, v in report.items()}
    if isinstance(report, list):
        return [nan_to_none(v) for v in report]
    if isinstance(report, float) and not math.isfinite(report):
        return None
    return report
