"""The feature spec: a Spark-free description of the fitted transform, applied at serving.

It is exported from the fitted Spark ML pipeline (imputer surrogates, StringIndexer labels,
StandardScaler mean/std, assembler order) and written as ``feature_spec.json``. Applying it
with NumPy gives the same feature vector as Spark's ``transform`` (within float rounding;
a parity test pins it at 1e-9).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

OTHER = "__other__"
MISSING = "__missing__"


@dataclass(frozen=True)
class CategoricalSpec:
    """One categorical feature: capped vocabulary -> index -> one-hot block.

    Attributes:
        name: feature name.
        kept: values kept by the vocabulary cap (others become ``__other__``); nulls are ``__missing__``.
        labels: StringIndexer labels in index order (frequencyDesc, ties alphabetical).
        width: one-hot width as Spark builds it: len(labels) slots, then the StringIndexer's
            unseen bucket (index len(labels)), then OneHotEncoder's own invalid slot (always 0 here,
            since StringIndexer already maps unseen values into range).
    """

    name: str
    kept: tuple[str, ...]
    labels: tuple[str, ...]
    width: int


@dataclass(frozen=True)
class FeatureSpec:
    """Fitted transform: numeric block (impute, standardise) then one-hot blocks, in order.

    Attributes:
        numeric: numeric feature names, in order.
        impute: surrogate value per numeric feature (Spark ML Imputer, train split only).
        mean, std: StandardScaler statistics per numeric feature (std is the sample std, n-1).
        categorical: one :class:`CategoricalSpec` per categorical feature, in order.
        timezone: IANA zone used for calendar features.
    """

    numeric: tuple[str, ...]
    impute: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categorical: tuple[CategoricalSpec, ...]
    timezone: str
    input_columns: tuple[str, ...] = field(default=())

    @property
    def width(self) -> int:
        """Length of the feature vector."""
        return len(self.numeric) + sum(c.width for c in self.categorical)

    @property
    def feature_names(self) -> list[str]:
        """Name of each slot of the feature vector, in order (``dest=JFK``, ``dest=<unseen>``)."""
        names = list(self.numeric)
        for c in self.categorical:
            names += [f"{c.name}={v}" for v in c.labels] + [f"{c.name}=<unseen>"]
            names += [f"{c.name}=<invalid{i}>" for i in range(c.width - len(c.labels) - 1)]
        return names

    # -------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        cats = tuple(CategoricalSpec(name=c["name"], kept=tuple(c["kept"]), labels=tuple(c["labels"]),
                                     width=int(c["width"])) for c in d["categorical"])
        return cls(numeric=tuple(d["numeric"]), impute=tuple(d["impute"]), mean=tuple(d["mean"]),
                   std=tuple(d["std"]), categorical=cats, timezone=d["timezone"],
                   input_columns=tuple(d.get("input_columns", ())))

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
    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Feature matrix for derived rows.

        Args:
            frame: DataFrame of shape (n, k) holding every name in ``numeric`` and ``categorical``
                (the output of ``pandas_flights_with_lookups``).

        Returns:
            float64 array of shape (n, ``width``).
        """
        n = len(frame)
        out = np.zeros((n, self.width), dtype=np.float64)
        for j, name in enumerate(self.numeric):
            x = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            x = np.where(np.isnan(x), self.impute[j], x)
            sd = self.std[j]
            out[:, j] = (x - self.mean[j]) / sd if sd != 0.0 else 0.0
        col = len(self.numeric)
        for c in self.categorical:
            kept = set(c.kept)
            index = {v: i for i, v in enumerate(c.labels)}
            for r, v in enumerate(frame[c.name].tolist()):
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    v = MISSING
                elif v not in kept and v != MISSING:
                    v = OTHER
                out[r, col + index.get(v, len(c.labels))] = 1.0
            col += c.width
        return out
