"""A registered model version loaded for scoring: estimator + feature spec + lookups + threshold."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlops_ray.preprocess.records import RecordTransformer

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """What a replica (or batch scoring) needs to answer.

    Attributes:
        name, version, alias: registry identity.
        estimator: a fitted scikit-learn classifier with ``predict_proba``.
        transformer: raw records -> features, exactly as in training.
        threshold: decision threshold chosen on validation.
        info: the version's ``version.json`` (metrics, trained_at, libraries...).
        path: the folder the version's files were loaded from (feature spec, drift reference).
    """

    name: str
    version: str
    alias: str | None
    estimator: Any
    transformer: RecordTransformer
    threshold: float
    info: dict[str, Any]
    path: str | None = None

    @classmethod
    def from_dir(cls, path: str | Path, *, name: str, version: str, alias: str | None) -> "ServedModel":
        """Load from a downloaded artifact folder (see :mod:`mlops_ray.registry`)."""
        from mlops_ray.tune import load_model

        path = Path(path)
        info = json.loads((path / "version.json").read_text())
        return cls(name=name, version=version, alias=alias, estimator=load_model(path),
                   transformer=RecordTransformer.from_dir(path), threshold=float(info["threshold"]), info=info,
                   path=str(path))

    def predict_proba(self, records: list[dict] | pd.DataFrame) -> np.ndarray:
        """P(delay > 15 min) per record, float64 of shape (len(records),).

        ``records``: validated request records (list of dicts; the column-array path) or a DataFrame of raw
        rows (the pandas path); both give the same numbers.
        """
        if isinstance(records, pd.DataFrame):
            return self.estimator.predict_proba(self.transformer.transform(records))[:, 1]
        return self.score(records)[0]

    def score(self, records: list[dict]) -> tuple[np.ndarray, dict[str, Any]]:
        """Probabilities and the derived features they were computed from, in one derivation.

        Args:
            records: n validated records (:func:`~mlops_ray.serve.schema.validate_records`).

        Returns:
            (proba, columns): P(delay > 15 min), float64 (n,); and the pre-encoding features as
            :meth:`~mlops_ray.preprocess.records.RecordTransformer.derived_columns` returns them, column ->
            (n,) values (what the online drift recorder counts, so a replica derives once per request).
        """
        columns = self.transformer.derived_columns(records)
        X = self.transformer.spec.transform(columns, n=len(records))
        return self.estimator.predict_proba(X)[:, 1], columns

    def predictions(self, records: list[dict]) -> list[dict[str, Any]]:
        """The API's prediction objects: probability, label (at the threshold), threshold."""
        return self.predictions_from(self.predict_proba(records))

    def predictions_from(self, proba: np.ndarray) -> list[dict[str, Any]]:
        """The API's prediction objects from probabilities of shape (n_records,) this model scored (the batched
        path scores several requests' records in one call and splits the result back)."""
        return [{"probability": float(p), "label": int(p >= self.threshold), "threshold": self.threshold}
                for p in proba]


def load_served_model(register_cfg, home, uri: str, dest: str | Path, alias: str | None = None) -> ServedModel:
    """Resolve ``uri`` in the registry, download and verify the artifacts, and load them.

    ``alias`` labels the model in answers when ``uri`` names a version (``models:/flights/3``
    deployed as the champion); by default it is the URI's own alias, if any.
    """
    from mlops_ray.registry import download_version, parse_model_uri

    mv, local = download_version(register_cfg, home, uri, dest)
    _, uri_alias, _ = parse_model_uri(uri)
    return ServedModel.from_dir(local, name=mv.name, version=str(mv.version), alias=alias or uri_alias)
