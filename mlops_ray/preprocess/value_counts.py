"""Exact, partition-independent statistics of the training split.

Spark computes one thing: for every feature, how many training rows hold each distinct value
(one ``groupBy(feature, value).count()`` over the unpivoted features, a single pass). Counts
are integers, so they do not depend on partitioning, task order or the cluster. Everything the
fitted transform and the drift reference use is then derived from those counts on the driver
with exact rational arithmetic (:class:`fractions.Fraction`) and rounded to float64 once:

- quantiles, with no approximation (Spark's ``approxQuantile`` and the ML ``Imputer`` default
  to a relative error of 1e-3, and their answer depends on partitioning). The imputation
  median uses Hyndman & Fan's type 7, the definition of ``numpy.quantile``'s default method and
  of Spark SQL's ``percentile``: ``h = (n - 1) * p``,
  ``q = x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])`` over the sorted
  non-null values ``x``; the drift bin edges use type 1 (``method="inverted_cdf"``), which is
  always a data value;
- mean and standard deviation (sample, ``n - 1``): exact sums of ``c * v`` and ``c * v**2``.

So the same rows give bit-identical statistics anywhere (local mode, a standalone cluster,
any number of partitions). Driver memory and time grow with the number of *distinct* values
per feature (a few thousand for the flights features), not with the number of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from mlops_ray.errors import DataError
from mlops_ray.preprocess.feature_spec import MISSING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class NumericCounts:
    """Distinct non-null values of one numeric feature with their row counts.

    Attributes:
        name: feature name.
        values: float64 array of shape (d,), the distinct finite values, ascending.
        counts: int64 array of shape (d,), rows holding each value (all >= 1).
        nulls: rows where the feature is null or NaN.
    """

    name: str
    values: np.ndarray
    counts: np.ndarray
    nulls: int

    @property
    def count(self) -> int:
        """Rows with a non-null value."""
        return int(self.counts.sum())

    @property
    def rows(self) -> int:
        return self.count + self.nulls

    def _require_values(self) -> None:
        if self.count == 0:
            raise DataError(f"preprocess: numeric feature '{self.name}' is null in every training row, so it has "
                            "no median, mean or scale; remove it from preprocess.numeric_features or fix the data.")

    def quantile(self, p: Fraction, method: str = "linear") -> float:
        """Exact quantile of the non-null values at probability ``p`` (0 <= p <= 1).

        Args:
            p: probability, as an exact fraction (``Fraction(1, 2)`` for the median).
            method: ``"linear"`` (Hyndman & Fan type 7, numpy's default) or ``"inverted_cdf"`` (type 1:
                the smallest value whose cumulative share reaches ``p``; always a data value).

        Raises:
            DataError: the feature has no non-null value.
        """
        self._require_values()
        n, p = self.count, Fraction(p)
        cum = np.cumsum(self.counts)

        def at(rank0: int) -> Fraction:  # the value at 0-based rank in the sorted non-null values
            return Fraction(float(self.values[int(np.searchsorted(cum, rank0, side="right"))]))

        if method == "inverted_cdf":
            return float(at(max(math.ceil(n * p), 1) - 1))
        if method != "linear":
            raise ValueError(f"method must be 'linear' or 'inverted_cdf'; got {method!r}")
        h = (n - 1) * p
        lo = math.floor(h)
        x_lo = at(lo)
        return float(x_lo) if h == lo else float(x_lo + (h - lo) * (at(lo + 1) - x_lo))

    def mean_std(self, fill: float | None = None) -> tuple[float, float]:
        """Exact mean and sample standard deviation; with ``fill``, of the values after imputation.

        Args:
            fill: value that replaces the ``nulls`` rows; None: the non-null values only.

        Returns:
            (mean, std), each the exact value rounded once to float64 (std is 0.0 for fewer than 2 rows).

        Raises:
            DataError: the feature has no non-null value.
        """
        self._require_values()
        n = self.count
        s, q = _exact_sum_and_square_sum(self.values, self.counts)
        if fill is not None and self.nulls:
            f = Fraction(fill)
            s, q, n = s + self.nulls * f, q + self.nulls * f * f, n + self.nulls
        mean = s / n
        var = (q - s * mean) / (n - 1) if n > 1 else Fraction(0)
        return float(mean), math.sqrt(float(var))


def _exact_sum_and_square_sum(values: np.ndarray, counts: np.ndarray) -> tuple[Fraction, Fraction]:
    """``sum(c * v)`` and ``sum(c * v**2)`` without rounding (every float64 is an integer over a power of two)."""
    ratios = [float(v).as_integer_ratio() for v in values]
    den = max((d for _, d in ratios), default=1)  # powers of two: each d divides den
    nums = [n * (den // d) for n, d in ratios]
    s = sum(int(c) * m for c, m in zip(counts, nums))
    q = sum(int(c) * m * m for c, m in zip(counts, nums))
    return Fraction(s, den), Fraction(q, den * den)


@dataclass(frozen=True)
class CategoricalCounts:
    """Distinct non-null values of one categorical feature (as strings) with their row counts.

    Attributes:
        name: feature name.
        values: distinct values, most frequent first, ties by code point (never ``__missing__``).
        counts: int64 array of shape (d,), rows holding each value.
        nulls: rows where the feature is null (or the token ``__missing__``).
    """

    name: str
    values: tuple[str, ...]
    counts: np.ndarray
    nulls: int

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    @property
    def rows(self) -> int:
        return self.count + self.nulls


@dataclass(frozen=True)
class ValueCounts:
    """Per-feature value counts of one DataFrame (the training split): the input of every fitted statistic."""

    rows: int
    numeric: dict[str, NumericCounts]
    categorical: dict[str, CategoricalCounts]


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def spark_value_counts(df: "DataFrame", numeric: tuple[str, ...], categorical: tuple[str, ...]) -> ValueCounts:
    """Count the rows of ``df`` per (feature, distinct value): one Spark aggregation, exact.

    Numeric features are cast to double (NaN counts as null), categorical ones to string.

    Raises:
        DataError: a numeric feature holds an infinite value (validate should have quarantined it).
    """
    from pyspark.sql import functions as F

    if not numeric and not categorical:
        return ValueCounts(rows=df.count(), numeric={}, categorical={})
    parts = []
    for name in numeric:
        parts.append(f"'{name}', CAST({_quote(name)} AS DOUBLE), CAST(NULL AS STRING)")
    for name in categorical:
        parts.append(f"'{name}', CAST(NULL AS DOUBLE), CAST({_quote(name)} AS STRING)")
    stacked = df.selectExpr(f"stack({len(parts)}, {', '.join(parts)}) AS (feature, num, cat)")
    num_null = F.col("num").isNull() | F.isnan("num")
    counted = (stacked.withColumn("num", F.when(num_null, F.lit(None).cast("double")).otherwise(F.col("num")))
               .withColumn("cat", F.when(F.col("cat") == F.lit(MISSING), F.lit(None).cast("string"))
                           .otherwise(F.col("cat")))
               .groupBy("feature", "num", "cat").count())
    rows = counted.collect()
    by_feature: dict[str, list] = {name: [] for name in (*numeric, *categorical)}
    for r in rows:
        by_feature[r["feature"]].append(r)

    out_num = {}
    for name in numeric:
        pairs = [(r["num"], r["count"]) for r in by_feature[name] if r["num"] is not None]
        nulls = sum(r["count"] for r in by_feature[name] if r["num"] is None)
        bad = [v for v, _ in pairs if math.isinf(v)]
        if bad:
            raise DataError(f"preprocess: numeric feature '{name}' holds {bad[0]} in the training split; expected "
                            "finite values (validate quarantines NaN/infinity in float/double source columns; check "
                            "how the feature is derived).")
        pairs.sort()
        out_num[name] = NumericCounts(name, np.array([v for v, _ in pairs], dtype=np.float64),
                                      np.array([c for _, c in pairs], dtype=np.int64), int(nulls))
    out_cat = {}
    for name in categorical:
        pairs = sorted(((r["cat"], r["count"]) for r in by_feature[name] if r["cat"] is not None),
                       key=lambda vc: (-vc[1], vc[0]))
        nulls = sum(r["count"] for r in by_feature[name] if r["cat"] is None)
        out_cat[name] = CategoricalCounts(name, tuple(v for v, _ in pairs),
                                          np.array([c for _, c in pairs], dtype=np.int64), int(nulls))
    first = next(iter((*out_num.values(), *out_cat.values())))
    return ValueCounts(rows=first.rows, numeric=out_num, categorical=out_cat)
