"""Raw records -> feature matrix without Spark: the serving side of the feature spec.

Holds the FeatureSpec and (flights recipe) the lookup tables of one model version; derivation
follows :mod:`mlops_ray.preprocess.derive` (recipe 'table': the features are the input columns)
and encoding follows :class:`FeatureSpec` exactly.

Two equal paths: a request's records (a list of dicts) go through column arrays
(:meth:`RecordTransformer.derived_columns`, no DataFrame: ~10x cheaper for one record); a DataFrame
(batch scoring, explain) goes through pandas (:meth:`RecordTransformer.derived`). Both give the
same matrix bit for bit (tests/preprocess/test_records_columns.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mlops_ray.preprocess.derive import LookupIndex, columns_flights_with_lookups, pandas_flights_with_lookups
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

    def derived_columns(self, records: list[dict]) -> dict[str, np.ndarray | pd.Series]:
        """Pre-encoding features as one array per column, built straight from the records (no DataFrame).

        The same values as :meth:`derived` (bit for bit once encoded; a null may be None here where the
        frame holds NaN), in the form :meth:`FeatureSpec.transform` and the online drift recorder take.

        Args:
            records: n validated records (:func:`~mlops_ray.serve.schema.validate_records`): dicts keyed by
                input column, an optional column absent or None.

        Returns:
            column -> values of shape (n,). Flights recipe: every feature of
            :func:`~mlops_ray.preprocess.derive.columns_flights_with_lookups` (float64 numbers, object
            strings, ``weather_hour`` datetime64[us] UTC). Table recipe: every input column, typed as
            ``DataFrame.from_records`` would type it (int64/float64 arrays for plain numbers, else a Series).

        Raises:
            KeyError, TypeError, ValueError: a required flights column is missing or not a number
            (records that passed validation never are).
        """
        if self.spec.recipe == "table":
            return {name: _table_column([r.get(name) for r in records]) for name in self.spec.inputs}
        return columns_flights_with_lookups(records, self._index, self.spec.timezone)

    def transform(self, records: list[dict] | pd.DataFrame) -> np.ndarray:
        """Feature matrix, float64 of shape (len(records), spec.width): a list of records through
        :meth:`derived_columns`, a DataFrame through :meth:`derived` (the same numbers)."""
        if isinstance(records, pd.DataFrame):
            return self.spec.transform(self.derived(records))
        return self.spec.transform(self.derived_columns(records), n=len(records))


def _table_column(values: list) -> np.ndarray | pd.Series:
    """One input column of a table-recipe request as ``DataFrame.from_records`` types it: only ints -> int64,
    ints/floats with at least one number -> float64 (None as NaN); anything else (text, booleans, all null,
    ints beyond int64) a Series inferred by pandas, as the frame would hold it."""
    types = set(map(type, values))
    if types == {int}:
        try:
            return np.array(values, dtype=np.int64)
        except OverflowError:
            pass
    elif types <= {int, float, type(None)} and types & {int, float} and (float in types or type(None) in types) \
            and all(-2**63 <= v < 2**63 for v in values if type(v) is int):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.Series(values)
