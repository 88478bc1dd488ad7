"""Raw records -> feature matrix without Spark: the serving side of the feature spec.

Holds the FeatureSpec and (flights recipe) the lookup tables of one model version; derivation
follows :mod:`mlops_ray.preprocess.derive` (recipe 'table': the features are the input columns)
and encoding follows :class:`FeatureSpec` exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops_ray.preprocess.derive import LookupIndex, pandas_flights_with_lookups
from mlops_ray.preprocess.feature_spec import FeatureSpec


class RecordTransformer:
    """Turns raw records into the model's feature matrix.

    Args:
        spec: the fitted FeatureSpec.
        weather_lookup: flights recipe: DataFrame with origin, weather_hour (UTC) and the weather columns.
        planes_lookup: flights recipe: DataFrame with tailnum and the plane columns.
    """

    def __init__(self, spec: FeatureSpec, weather_lookup: pd.DataFrame | None = None,
                 planes_lookup: pd.DataFrame | None = None):
        self.spec = spec
        self.weather_lookup = weather_lookup
        self.planes_lookup = planes_lookup
        self._index = LookupIndex(weather_lookup, planes_lookup) if weather_lookup is not None else None

    @classmethod
    def from_dir(cls, path: str | Path) -> "RecordTransformer":
        """Load from a folder holding ``feature_spec.json`` and (flights) ``lookups/{weather,planes}/`` Parquet."""
        path = Path(path)
        spec = FeatureSpec.load(path / "feature_spec.json")
        if spec.recipe == "table":
            return cls(spec)
        weather = pd.read_parquet(path / "lookups" / "weather")
        weather["weather_hour"] = pd.to_datetime(weather["weather_hour"], utc=True).astype("datetime64[us, UTC]")
        planes = pd.read_parquet(path / "lookups" / "planes")
        return cls(spec, weather, planes)

    def frame(self, records: list[dict] | pd.DataFrame) -> pd.DataFrame:
        """Records as a DataFrame with every input-schema column (absent optional ones as null)."""
        df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame.from_records(records)
        for name in self.spec.inputs:
            if name not in df:
                df[name] = None
        return df.reset_index(drop=True)

    def derived(self, records: list[dict] | pd.DataFrame) -> pd.DataFrame:
        """Pre-encoding features (the spec's numeric and categorical columns), one row per record."""
        if self.spec.recipe == "table":
            return self.frame(records)
        return pandas_flights_with_lookups(self.frame(records), self.weather_lookup, self.planes_lookup,
                                           self.spec.timezone, index=self._index)

    def transform(self, records: list[dict] | pd.DataFrame) -> np.ndarray:
        """Feature matrix, float64 of shape (len(records), spec.width)."""
        return self.spec.transform(self.derived(records))
