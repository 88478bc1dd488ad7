"""Windowed per-feature histograms, cheap to update per request and exact to merge across replicas.

Each replica counts, per feature, how many records fell in each bin of the training reference
(numeric: the reference-quantile bins of :func:`mlops_ray.monitor.drift.bin_counts`;
categorical: the reference categories plus one bucket for unseen ones) and how many were null,
in time slots; the window is the last ``window_s`` seconds of slots. Counts add up, so the
window of the whole deployment is the sum of the replicas' windows, and PSI computed from the
summed counts is exact (per-replica PSI values could not be combined).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from typing import Any

import numpy as np
import pandas as pd

from mlops_ray.monitor.drift import psi


class FeatureWindow:
    """Bin counts of recent records per feature.

    Args:
        numeric_edges: feature -> interior bin edges (k,) (k + 1 bins).
        categories: feature -> reference categories (m,) (m + 1 buckets: the last is unseen).
        window_s: window length, seconds.
        slots: the window is kept as this many time slots (expiry granularity window_s / slots).
        category_types: categorical feature -> the JSON type of its raw input (``integer``, ``boolean``):
            its values are compared as Spark's ``CAST(... AS STRING)`` wrote the reference categories
            (``True`` -> ``"true"``, ``1.0`` of an int column -> ``"1"``; :data:`~mlops_ray.preprocess.
            feature_spec.CATEGORY_KEYS`); other features compare ``str(value)``.

    Attributes:
        counts_: feature -> int64 array (slots, bins + 1): per slot, counts per bin, then nulls.
    """

    def __init__(self, numeric_edges: dict[str, Any], categories: dict[str, list[str]], window_s: float = 300.0,
                 slots: int = 10, category_types: dict[str, str] | None = None):
        from mlops_ray.preprocess.feature_spec import CATEGORY_KEYS

        self.numeric_edges = {k: np.asarray(v, dtype=float) for k, v in numeric_edges.items()}
        self.categories = {k: list(map(str, v)) for k, v in categories.items()}
        self.window_s = window_s
        self.slots = slots
        self._index = {k: pd.Index(v) for k, v in self.categories.items()}
        self._edges_list = {k: v.tolist() for k, v in self.numeric_edges.items()}
        self._codes = {k: {c: j for j, c in enumerate(v)} for k, v in self.categories.items()}
        #: categorical feature -> its key function (a typed input), else absent (``str``)
        self._keys = {k: CATEGORY_KEYS[t] for k, t in (category_types or {}).items()
                      if k in self.categories and t in CATEGORY_KEYS}
        width = {**{k: len(v) + 2 for k, v in self.numeric_edges.items()},
                 **{k: len(v) + 2 for k, v in self.categories.items()}}
        self.counts_ = {k: np.zeros((slots, w), dtype=np.int64) for k, w in width.items()}
        self._slot_start = np.full(slots, -np.inf)

    def _slot(self, now: float) -> int:
        length = self.window_s / self.slots
        start = np.floor(now / length) * length
        i = int(start / length) % self.slots
        if self._slot_start[i] != start:  # a new period for this slot: forget what it held
            self._slot_start[i] = start
            for c in self.counts_.values():
                c[i] = 0
        return i

    def update(self, records: pd.DataFrame, now: float | None = None) -> None:
        """Count ``records`` (a DataFrame of raw feature columns; a missing column counts as null)."""
        i = self._slot(time.time() if now is None else now)
        n = len(records)
        for name, edges in self.numeric_edges.items():
            col = records[name] if name in records else None
            x = np.full(n, np.nan) if col is None else pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            ok = np.isfinite(x)
            row = self.counts_[name][i]
            row[:-1] += np.bincount(np.searchsorted(edges, x[ok], side="left"), minlength=len(edges) + 1)
            row[-1] += n - int(ok.sum())
        for name, index in self._index.items():
            col = records[name] if name in records else pd.Series([None] * n)
            null = col.isna().to_numpy()
            key = self._keys.get(name)
            codes = index.get_indexer(col[~null].map(key) if key else col[~null].astype(str))
            codes[codes < 0] = len(index)  # unseen
            row = self.counts_[name][i]
            row[:-1] += np.bincount(codes, minlength=len(index) + 1)
            row[-1] += int(null.sum())

    def update_records(self, records: list[dict[str, Any]], now: float | None = None) -> None:
        """Count raw records (a request's ``records``): the per-request path, plain Python per value.

        Same counts as :meth:`update` on the same rows; a missing key, None, NaN or a value that is
        not a number counts as null for a numeric feature.
        """
        i = self._slot(time.time() if now is None else now)
        for name, edges in self._edges_list.items():
            row = self.counts_[name][i]
            nulls = 0
            for r in records:
                v = r.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    row[bisect_left(edges, v)] += 1
                else:
                    nulls += 1
            row[-1] += nulls
        for name, codes in self._codes.items():
            row = self.counts_[name][i]
            unseen = len(codes)
            key = self._keys.get(name, str)
            for r in records:
                v = r.get(name)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    row[-1] += 1
                else:
                    row[codes.get(key(v), unseen)] += 1

    def update_columns(self, columns: dict[str, Any], n: int, now: float | None = None) -> None:
        """Count ``n`` rows given as one array-like per feature (the per-request path for a derived frame).

        Same counts as :meth:`update` on the same rows. Small batches (``n <= 8``) are counted in plain
        Python, larger ones with NumPy, because a NumPy call costs more than a few Python steps.

        Args:
            columns: feature -> values of shape (n,) (a missing feature counts as null): numbers
                (NaN/None/inf are null) for numeric features, values compared as ``str`` for
                categorical ones (None/NaN are null, others outside the categories are unseen).
            n: rows in the batch.
            now: the rows' time, seconds since the epoch (default: ``time.time()``).
        """
        i = self._slot(time.time() if now is None else now)
        small = n <= 8
        for name, edges in self._edges_list.items():
            row = self.counts_[name][i]
            col = columns.get(name)
            if col is None:
                row[-1] += n
            elif small:
                for v in (col.tolist() if hasattr(col, "tolist") else col):
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                        row[bisect_left(edges, v)] += 1
                    else:
                        row[-1] += 1
            else:
                x = np.asarray(col)
                if x.dtype.kind not in "fiu":
                    x = pd.to_numeric(pd.Series(x), errors="coerce").to_numpy(dtype=float)
                x = x.astype(float, copy=False)
                ok = np.isfinite(x)
                row[:-1] += np.bincount(np.searchsorted(self.numeric_edges[name], x[ok], side="left"),
                                        minlength=len(edges) + 1)
                row[-1] += n - int(ok.sum())
        for name, codes in self._codes.items():
            row = self.counts_[name][i]
            col = columns.get(name)
            if col is None:
                row[-1] += n
                continue
            unseen = len(codes)
            key = self._keys.get(name)
            for v in (col.tolist() if hasattr(col, "tolist") else col):
                if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                    row[-1] += 1
                elif key is not None:
                    row[codes.get(key(v), unseen)] += 1
                else:
                    row[codes.get(v if isinstance(v, str) else str(v), unseen)] += 1

    def live_slots(self, now: float | None = None) -> np.ndarray:
        """Boolean mask (slots,) of the slots inside the window ending at ``now``."""
        now = time.time() if now is None else now
        return self._slot_start > now - self.window_s

    def totals(self, now: float | None = None) -> dict[str, np.ndarray]:
        """Counts over the window ending at ``now``: feature -> (bins + 1,) with nulls last."""
        now = time.time() if now is None else now
        live = self._slot_start > now - self.window_s
        return {k: c[live].sum(axis=0) for k, c in self.counts_.items()}


def window_drift(totals: dict[str, np.ndarray], reference: dict[str, np.ndarray], min_rows: int = 30
                 ) -> dict[str, dict[str, float | None]]:
    """PSI and null share per feature from (summed) window counts and the reference's bin counts.

    Args:
        totals: feature -> window counts (bins + 1,), nulls last (from :meth:`FeatureWindow.totals`,
            summed over replicas).
        reference: feature -> reference counts per bin (bins,), without nulls (unseen bucket 0).

    Returns:
        feature -> {"psi": float or None (fewer than ``min_rows`` non-null), "null_share": float or
        None (empty window), "rows": int}.
    """
    out = {}
    for name, counts in totals.items():
        counts = np.asarray(counts, dtype=float)
        rows = float(counts.sum())
        non_null = counts[:-1]
        out[name] = {"rows": int(rows), "null_share": float(counts[-1] / rows) if rows else None,
                     "psi": psi(reference[name], non_null) if non_null.sum() >= min_rows else None}
    return out
