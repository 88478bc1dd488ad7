"""Drift reference: per-feature statistics of the training split, for monitoring (PSI, null shares).

Computed from the exact value counts of :mod:`mlops_ray.preprocess.value_counts` (one Spark
aggregation over the pre-encoding training features) and written as ``reference_stats.json``
next to ``feature_spec.json``; ``data/manifest.json`` names it with its SHA-256.

Numeric bins (the convention monitoring must use to count serving values; it is the one of
:func:`mlops_ray.monitor.drift.bin_counts` and ``NumericDriftDetector.fit_binned(edges, counts,
nulls)``):

- ``quantiles`` are the exact type-1 (inverted CDF, ``numpy.quantile(method="inverted_cdf")``)
  quantiles of the non-null training values at probabilities ``i / bins`` for ``i = 0..bins``
  (``quantiles[0]`` is the minimum, ``quantiles[-1]`` the maximum); each is a data value.
- ``edges`` are the *interior* bin edges: the distinct values of ``quantiles[1:-1]``, ascending.
  Tied quantiles (a value holding more than ``1 / bins`` of the rows, e.g. ``precip == 0``) are
  merged, so a feature can have fewer than ``bins`` bins; a constant feature ``v`` has ``edges ==
  [v]`` and ``counts == [rows - nulls, 0]`` (an interior edge equal to the maximum leaves the last
  bin empty in training; values above it in serving are drift).
- ``k`` edges make ``k + 1`` bins, closed on the right: bin ``0`` is ``(-inf, edges[0]]``, bin
  ``i`` is ``(edges[i-1], edges[i]]``, the last is ``(edges[-1], +inf)``. So values below the
  training minimum count in the first bin and values above the maximum in the last; a value
  equal to an edge belongs to the bin that edge closes. In NumPy:
  ``numpy.searchsorted(edges, x, side="left")`` (:func:`bin_index`).
- ``counts`` holds the training rows per bin (length ``k + 1``). Null and NaN values are in no
  bin: they are counted in ``nulls`` (``sum(counts) + nulls == rows``); for PSI over bins and
  nulls together, treat ``nulls`` as one more bin.

Categorical frequencies: ``categories`` lists the vocabulary of the feature spec (the
``max_categories`` most frequent training values, ties by code point) with their counts;
``other`` counts the remaining non-null values (the encoder's ``<other>`` slot) and ``nulls``
the nulls (its ``<missing>`` slot). Serving values outside the vocabulary count in ``other``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from mlops_ray.preprocess.value_counts import CategoricalCounts, NumericCounts, ValueCounts

#: Layout version of reference_stats.json written by this code.
FORMAT = 2

BIN_RULE = ("numeric: edges = distinct exact inverted-CDF quantiles at i/bins, i = 1..bins-1 (interior edges); "
            "bin of x = searchsorted(edges, x, side='left'), i.e. k edges make k+1 right-closed bins "
            "(-inf, e0], (e0, e1], ..., (e[k-1], +inf); null/NaN in `nulls`, in no bin. categorical: "
            "`categories` (the feature spec's vocabulary) with counts, other non-null values in `other`, "
            "nulls in `nulls`.")


def bin_index(edges: list[float] | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bin of each non-null value under the reference convention.

    Args:
        edges: a feature's interior ``edges`` (length k >= 0, ascending).
        x: float array of shape (n,) without NaN.

    Returns:
        int64 array of shape (n,), values in ``0 .. k``.
    """
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(x, dtype=np.float64),
                           side="left").astype(np.int64)


def numeric_reference(nc: NumericCounts, bins: int) -> dict:
    """Null share, exact moments, quantiles, and right-closed quantile bins with counts for one numeric feature."""
    out: dict = {"rows": nc.rows, "nulls": nc.nulls, "null_share": nc.nulls / nc.rows if nc.rows else 0.0,
                 "count": nc.count}
    if nc.count == 0:
        return {**out, "mean": None, "std": None, "min": None, "median": None, "max": None,
                "quantiles": [], "edges": [], "counts": []}
    quantiles = [nc.quantile(Fraction(i, bins), method="inverted_cdf") for i in range(bins + 1)]
    edges = sorted(set(quantiles[1:-1]))
    counts = np.zeros(len(edges) + 1, dtype=np.int64)
    np.add.at(counts, bin_index(edges, nc.values), nc.counts)
    mean, std = nc.mean_std()
    return {**out, "mean": mean, "std": std, "min": float(nc.values[0]), "median": nc.quantile(Fraction(1, 2)),
            "max": float(nc.values[-1]), "quantiles": quantiles, "edges": edges,
            "counts": [int(c) for c in counts]}


def categorical_reference(cc: CategoricalCounts, vocabulary: tuple[str, ...]) -> dict:
    """Null share and the counts of the vocabulary's values, of the other values and of nulls."""
    count_of = dict(zip(cc.values, (int(c) for c in cc.counts)))
    listed = [{"value": v, "count": count_of.get(v, 0), "share": count_of.get(v, 0) / cc.rows if cc.rows else 0.0}
              for v in vocabulary]
    other = cc.count - sum(e["count"] for e in listed)
    return {"rows": cc.rows, "nulls": cc.nulls, "null_share": cc.nulls / cc.rows if cc.rows else 0.0,
            "count": cc.count, "distinct": len(cc.values), "categories": listed, "other": other}


def reference_stats(counts: ValueCounts, vocabularies: dict[str, tuple[str, ...]], bins: int = 10) -> dict:
    """The drift reference of the training split (layout: this module's docstring).

    Args:
        counts: exact value counts of the pre-encoding training features.
        vocabularies: the feature spec's vocabulary per categorical feature.
        bins: quantile bins per numeric feature (before merging tied edges).

    Returns:
        JSON-ready dict with ``rows``, ``bins``, ``bin_rule``, ``numeric`` and ``categorical``.
    """
    return {
        "format": FORMAT,
        "rows": counts.rows,
        "bins": bins,
        "bin_rule": BIN_RULE,
        "numeric": {name: numeric_reference(nc, bins) for name, nc in counts.numeric.items()},
        "categorical": {name: categorical_reference(cc, vocabularies[name]) for name, cc in counts.categorical.items()},
    }
