"""The feature spec: a Spark-free description of the fitted transform, applied at serving.

It is computed from exact statistics of the training split (:mod:`.value_counts`) and is the
single source of the fitted transform: the Spark ML pipeline is built from it
(:func:`mlops_ray.preprocess.encode.fit_encoder`) and serving applies it with NumPy/pandas.
Both compute the same IEEE-754 operations in the same order, so they agree to the last bit on
the same derived rows (a parity test pins it at 1e-9). Written as ``feature_spec.json``.

Vector layout (fixed at fit time)::

    [numeric_0 .. numeric_{m-1} | cat_0: label_0 .. label_{k0-1}, <missing>, <other> | cat_1: ...]

- numeric ``j``: null/NaN -> ``impute[j]``, then ``(x - mean[j]) / std[j]`` (0.0 where ``std[j]`` is 0);
- categorical: one-hot over the vocabulary ``labels`` (training frequency order, ties broken by
  code point), then two reserved slots: ``<missing>`` (null, or the token ``__missing__``) and
  ``<other>`` (any value not in the vocabulary: unseen in training or beyond the
  ``max_categories`` cap). Each categorical block is ``len(labels) + 2`` wide.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_ray.errors import DataError

#: A categorical value that stands for null (explain writes it for nulls); never a vocabulary entry.
MISSING = "__missing__"
#: Name of the reserved slot of values outside the vocabulary; never a vocabulary entry.
OTHER = "__other__"
#: Reserved tokens, excluded from every vocabulary.
RESERVED = frozenset({MISSING, OTHER})
#: Layout version of feature_spec.json written by this code.
FORMAT = 2


def _is_null(v: object) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and np.isnan(v))


def category_key(v: object) -> str | None:
    """A categorical value as the string Spark compares (``CAST(v AS STRING)``); None for null/``__missing__``."""
    if _is_null(v):
        return None
    s = v if isinstance(v, str) else str(v)
    return None if s == MISSING else s


def _integer_key(v: object) -> str | None:
    """:func:`category_key` of a value of an integer column: ``1.0`` -> ``"1"`` (pandas turns an int column
    holding a null into floats; Spark's ``CAST(1 AS STRING)`` is ``"1"``)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return category_key(v)


def _boolean_key(v: object) -> str | None:
    """:func:`category_key` of a value of a boolean column: ``True`` -> ``"true"`` (Spark's ``CAST(true AS
    STRING)``; Python's ``str`` gives ``"True"``)."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    return category_key(v)


#: The key function of a categorical raw input per JSON type (:attr:`FeatureSpec.input_schema`), so that serving
#: compares what training's ``CAST(column AS STRING)`` indexed; other types (and derived features) use
#: :func:`category_key`. A ``number`` column keeps Python's float text (Spark writes ``1.0E-5`` where Python
#: writes ``1e-05``): a categorical double is not supported bit for bit.
CATEGORY_KEYS = {"integer": _integer_key, "boolean": _boolean_key}


@dataclass(frozen=True)
class CategoricalSpec:
    """One categorical feature: vocabulary -> one-hot block with two reserved slots.

    Attributes:
        name: feature name.
        labels: the vocabulary in index order (training frequency descending, ties by code point);
            at most ``max_categories`` values, never a reserved token.
    """

    name: str
    labels: tuple[str, ...]

    @property
    def width(self) -> int:
        """Block width: one slot per label, then ``<missing>`` and ``<other>``."""
        return len(self.labels) + 2

    @property
    def missing_slot(self) -> int:
        """Offset of the ``<missing>`` slot inside the block."""
        return len(self.labels)

    @property
    def other_slot(self) -> int:
        """Offset of the ``<other>`` slot (unseen or capped values) inside the block."""
        return len(self.labels) + 1

    @cached_property
    def index(self) -> dict[str, int]:
        """Label -> its offset inside the block (built once)."""
        return {v: i for i, v in enumerate(self.labels)}


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted transform: numeric block (impute, standardise) then one-hot blocks, in order.

    Attributes:
        numeric: numeric feature names, in order.
        impute: value that replaces null/NaN per numeric feature (exact median, or exact mean, of the
            non-null training values; :mod:`mlops_ray.preprocess.value_counts`).
        mean, std: scaling statistics per numeric feature after imputation, computed exactly from the
            training value counts (std is the sample standard deviation, n - 1 in the denominator).
        categorical: one :class:`CategoricalSpec` per categorical feature, in order.
        timezone: IANA zone used for calendar features.
        input_columns: the raw record columns serving accepts.
        format: layout version of the JSON (:data:`FORMAT`).
        recipe: how raw records become the features above (``preprocess.recipe``): ``flights`` (derived
            calendar features and lookups, :mod:`.derive`) or ``table`` (the features are input columns).
        input_schema: the serving input schema, ``(name, type, required)`` per raw column, type one of
            ``integer``, ``number``, ``string``, ``boolean`` (JSON types); empty in specs written before it
            existed (the flights schema then).
        outcome_columns: raw columns known only after the fact (the label's source); a request carrying
            one is refused, naming it.
    """

    numeric: tuple[str, ...]
    impute: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical: tuple[CategoricalSpec, ...]
    timezone: str
    input_columns: tuple[str, ...] = field(default=())
    format: int = FORMAT
    recipe: str = "flights"
    input_schema: tuple[tuple[str, str, bool], ...] = ()
    outcome_columns: tuple[str, ...] = ()

    @property
    def inputs(self) -> dict[str, tuple[str, bool]]:
        """The serving input schema: raw column -> (JSON type, required), in order."""
        if self.input_schema:
            return {n: (t, bool(r)) for n, t, r in self.input_schema}
        from mlops_ray.preprocess.derive import INPUT_SCHEMA

        return dict(INPUT_SCHEMA)

    @property
    def width(self) -> int:
        """Length of the feature vector."""
        return len(self.numeric) + sum(c.width for c in self.categorical)

    @property
    def feature_names(self) -> list[str]:
        """Name of each slot of the feature vector, in order (``dest=JFK``, ``dest=<missing>``, ``dest=<other>``)."""
        names = list(self.numeric)
        for c in self.categorical:
            names += [f"{c.name}={v}" for v in c.labels] + [f"{c.name}=<missing>", f"{c.name}=<other>"]
        return names

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        """Inverse of :meth:`to_dict`.

        Raises:
            DataError: the JSON has another layout version (written by an older mlops_ray).
        """
        if d.get("format") != FORMAT:
            raise DataError(f"feature spec has layout format {d.get('format', 1)}, expected {FORMAT}; it was written "
                            "by an older mlops_ray. Re-run `mlops-ray preprocess` (and retrain) to rebuild it.")
        cats = tuple(CategoricalSpec(name=c["name"], labels=tuple(c["labels"])) for c in d["categorical"])
        return cls(numeric=tuple(d["numeric"]), impute=tuple(d["impute"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), categorical=cats, timezone=d["timezone"],
                   input_columns=tuple(d.get("input_columns", ())), format=int(d["format"]),
                   recipe=d.get("recipe", "flights"),
                   input_schema=tuple((n, t, bool(r)) for n, t, r in d.get("input_schema", ())),
                   outcome_columns=tuple(d.get("outcome_columns", ())))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def rounded_blob(self) -> bytes:
        """Canonical JSON with floats rounded to 1e-9 (the manifest fingerprint's input)."""
        def rnd(x):
            if isinstance(x, float):
                return round(x, 9)
            if isinstance(x, (list, tuple)):
                return [rnd(v) for v in x]
            if isinstance(x, dict):
                return {k: rnd(v) for k, v in x.items()}
            return x
        return json.dumps(rnd(self.to_dict()), sort_keys=True).encode()

    # -------------------------------------------------------------- transform
    def transform(self, frame: pd.DataFrame | Mapping[str, Any], n: int | None = None) -> np.ndarray:
        """Feature matrix for derived rows.

        Args:
            frame: the derived rows, holding every name in ``numeric`` and ``categorical``: a DataFrame of
                shape (n, k) (the output of ``pandas_flights_with_lookups``), or a mapping column -> values of
                shape (n,) (ndarray, Series or list; the output of ``RecordTransformer.derived_columns``).
                Numeric values are read as ``pd.to_numeric(errors="coerce")`` reads them (null or not a
                number -> imputed); categorical ones through their key (:data:`CATEGORY_KEYS`: the text Spark's
                ``CAST(... AS STRING)`` gives for the input's type). Both forms of the same rows give the same
                matrix bit for bit.
            n: rows, for a mapping (default: the length of its first feature column); ignored for a DataFrame.

        Returns:
            float64 array of shape (n, ``width``).

        Raises:
            KeyError: a feature column is missing.
        """
        columnar = not isinstance(frame, pd.DataFrame)
        if not columnar:
            n = len(frame)
        elif n is None:
            first = (self.numeric or tuple(c.name for c in self.categorical) or (None,))[0]
            n = len(frame[first]) if first is not None else 0
        out = np.zeros((n, self.width), dtype=np.float64)
        m = len(self.numeric)
        if m:
            X = np.empty((n, m), dtype=np.float64)
            for j, name in enumerate(self.numeric):
                X[:, j] = _numeric(frame[name]) if columnar else \
                    pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            impute, mean, std, zero = self._scaling
            X = np.where(np.isnan(X), impute, X)  # the same IEEE operations per value as column by column
            out[:, :m] = (X - mean) / std
            out[:, zero] = 0.0  # std 0 (a constant in training): 0.0, as Spark's StandardScaler
        col = m
        rows = np.arange(n)
        for c, key in zip(self.categorical, self._category_keys):
            index = c.index
            values = frame[c.name]
            values = values.tolist() if hasattr(values, "tolist") else list(values)
            slots = np.fromiter(
                (c.missing_slot if k is None else index.get(k, c.other_slot) for k in map(key, values)),
                dtype=np.int64, count=n)
            out[rows, col + slots] = 1.0
            col += c.width
        return out

    @cached_property
    def _category_keys(self) -> tuple:
        """The key function of each categorical feature (:data:`CATEGORY_KEYS` by its input type), in order."""
        kinds = self.inputs
        return tuple(CATEGORY_KEYS.get(kinds.get(c.name, ("string", False))[0], category_key)
                     for c in self.categorical)

    @cached_property
    def _scaling(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(impute, mean, std with 1.0 where it is 0: each (len(numeric),); positions where std is 0)."""
        std = np.asarray(self.std, dtype=np.float64)
        zero = std == 0.0
        return (np.asarray(self.impute, dtype=np.float64), np.asarray(self.mean, dtype=np.float64),
                np.where(zero, 1.0, std), np.flatnonzero(zero))


def _numeric(col: Any) -> np.ndarray:
    """float64 (n,) of one column as ``pd.to_numeric(errors="coerce")`` reads it (NaN for null or not a number)."""
    if isinstance(col, np.ndarray) and col.dtype.kind in "biuf":
        return col.astype(np.float64, copy=False)
    if not isinstance(col, pd.Series):
        col = pd.Series(col if isinstance(col, np.ndarray) else list(col), dtype=object)
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
