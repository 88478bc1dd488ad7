"""mlops_ray: an end-to-end ML pipeline on Spark and Ray (ingest -> ... -> deploy).

Importing this package starts nothing (no Spark, no Ray, no sockets). Public API::

    from mlops_ray import load_config, run_pipeline
    record = run_pipeline(load_config("mlops_ray/configs/flights.yaml"))
"""

from __future__ import annotations

from typing import Any

from mlops_ray.config import Config, config_from_mapping, load_config
from mlops_ray.errors import ConfigError, MlopsRayError, StageError

__all__ = ["Config", "ConfigError", "MlopsRayError", "StageError", "config_from_mapping", "load_config",
           "run_pipeline", "__version__"]

__version__ = "0.1.0"


def run_pipeline(cfg: Config, **kwargs: Any) -> dict[str, Any]:
    """Run the whole pipeline; see :func:`mlops_ray.pipeline.run_pipeline` for the arguments."""
    from mlops_ray.pipeline import run_pipeline as _run

    return _run(cfg, **kwargs)
