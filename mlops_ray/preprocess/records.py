"""Raw records -> feature matrix without Spark: the serving side of the feature spec.

Holds the FeatureSpec and the lookup tables of one model version; derivation follows
:mod:`mlops_ray.preprocess.derive` and encoding follows :class:`FeatureSpec` exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops_ray.preprocess.derive import INPUT_SCHEMA, pandas_flights_with_lookups
from mlops_ray.preprocess.feature_spec import FeatureSpec


class RecordTransformer:
    """Turns raw flight records into the model's feature matrix.

    Args:
        spec: the fitted FeatureSpec.
        weather_lookup: DataFrame with origin, weather_hour (UTC) and the weather columns.
        planes_lookup: DataFrame with tailnum and the plane columns.
    """

    def __init__(self, spec: FeatureSpec, weather_lookup: pd.DataFrame, planes_lookup: pd.DataFrame):
        self.spec = spec
        self.weather_lookup = weather_lookup
        self.planes_lookup = planes_lookup

    @classmethod
    def from_dir(cls, path: str | Path) -> "RecordTransformer":
        """Load from a folder holding ``feature_spec.json`` and ``lookups/{weather,planes}/`` Parquet."""
        path = Path(path)
        weather = pd.read_parquet(path / "lookups" / "weather")
        weather["weather_hour"] = pd.to_datetime(weather["weather_hour"], utc=True).astype("datetime64[us, UTC]")
        planes = pd.read_parquet(path / "lookups" / "planes")
        return cls(FeatureSpec.load(path / "feature_spec.json"), weather, planes)

    def frame(self, records: list[dict] | pd.DataFrame) -> pd.DataFrame:
        """Records as a DataFrame with every input-schema column (absent optional ones as null)."""
        df = records.copy() if isinstance(records, pd.DataFrame) else pd.DataFrame.from_records(records)
        for name in INPUT_SCHEMA:
            if name not in df:
                df[name] = None
        return df.reset_index(drop=True)

    def derived(self, records: list[dict] | pd.DataFrame) -> pd.DataFrame:
        """Pre-encoding features (the spec's numeric and categorical columns), one row per record."""
        return pandas_flights_with_lookups(self.frame(records), self.weather_lookup, self.planes_lookup,
                                           self.spec.timezone)

    def transform(self, records: list[dict] | pd.DataFrame) -> np.ndarray:
        """Feature matrix, float64 of shape (len(records), spec.width)."""
        return self.spec.transform(self.derived(records))
