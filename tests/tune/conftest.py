"""Synthetic preprocess outputs for the tune tests: the same Parquet layout preprocess writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def write_preprocess(root: Path, n_train: int = 4000, width: int = 12, seed: int = 0) -> Path:
    """``data/{train,validation}`` Parquet with a fixed-width ``features`` array and a 0/1 ``label``.

    The label depends on an interaction (x1 * x2), so tree models beat the linear one.
    """
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("validation", max(200, n_train // 4))):
        X = rng.normal(size=(n, width))
        y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=n) > 0.5).astype(np.int64)
        d = root / "data" / split
        d.mkdir(parents=True, exist_ok=True)
        feats = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), width)
        pq.write_table(pa.table({"features": feats.cast(pa.list_(pa.float64())), "label": y}), d / "part-0.parquet")
    return root


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return write_preprocess(tmp_path_factory.mktemp("pre"))


def tune_config(**tune):
    """A TuneConfig for tests: small, fast families unless overridden."""
    from mlops_ray.config import config_from_mapping

    base = {"num_samples": 2, "iterations_per_report": 10, "track_trials": False, "search_space": {
        "logistic_regression": {"C": {"distribution": "loguniform", "low": 0.01, "high": 1.0}},
        "random_forest": {"n_estimators": {"distribution": "fixed", "value": 20},
                          "max_depth": {"distribution": "randint", "low": 3, "high": 8}},
        "hist_gradient_boosting": {"max_iter": {"distribution": "fixed", "value": 60},
                                   "learning_rate": {"distribution": "loguniform", "low": 0.03, "high": 0.3}},
        "keras_mlp": {"epochs": {"distribution": "fixed", "value": 4}, "batch_size": {"distribution": "fixed", "value": 128},
                      "hidden_units": {"distribution": "choice", "values": [16, 32]}}}}
    base.update(tune)
    return config_from_mapping({"tune": base}).tune
