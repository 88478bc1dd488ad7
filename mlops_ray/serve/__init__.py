"""Deploy: serve ``models:/<name>@champion`` on Ray Serve over HTTP, and the smoke check.

The application and its routes live in :mod:`mlops_ray.serve.app` (imported lazily: it
needs Ray Serve). Autoscaling settings come from ``deploy.autoscaling``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_ray.config import DeployConfig, RegisterConfig
from mlops_ray.errors import MlopsRayError
from mlops_ray.home import Home

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployResult:
    """Where the model answers and which one."""

    url: str
    app_name: str
    model_uri: str
    version: str | None
    ready_after_s: float


def endpoint_url(cfg: DeployConfig) -> str:
    """Base URL of the Serve HTTP proxy, e.g. ``http://127.0.0.1:8000``."""
    return f"http://{cfg.host}:{cfg.port}"


def wait_ready(url: str, timeout_s: float) -> dict[str, Any]:
    """Poll ``GET {url}/readyz`` until 200 or ``timeout_s``.

    Raises:
        MlopsRayError: not ready in time (with the last answer).
    """
    import requests

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
            last = f"{r.status_code} {r.text[:300]}"
            if r.status_code == 503 and "not ready:" in r.text and "model is loading" not in r.text:
                break  # the replica reported a load error: it will not fix itself
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.5)
    raise MlopsRayError(f"deploy: {url}/readyz did not answer 200 within {timeout_s:.0f} s; last answer: {last}")


def run_deploy(cfg: DeployConfig, register_cfg: RegisterConfig, ray, home: Home, model_uri: str | None = None) -> DeployResult:
    """Start (or update) the Serve application serving ``model_uri`` and wait until it is ready.

    Args:
        ray: the connected ``ray`` module (Serve runs in that cluster).
        model_uri: default ``models:/<register.model_name>@<deploy.model_alias>``.
    """
    from ray import serve

    from mlops_ray.serve.app import ModelServer

    uri = model_uri or f"models:/{register_cfg.model_name}@{cfg.model_alias}"
    t0 = time.monotonic()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    deployment = ModelServer.options(autoscaling_config=cfg.autoscaling.to_serve(),
                                     ray_actor_options={"num_cpus": cfg.num_cpus_per_replica})
    serve.run(deployment.bind(uri, register_cfg.model_dump(mode="json"), str(home.root), cfg.max_request_bytes,
                              cfg.max_records),
              name=cfg.app_name, route_prefix="/", blocking=False)
    url = endpoint_url(cfg)
    ready = wait_ready(url, cfg.ready_timeout_s)
    elapsed = time.monotonic() - t0
    logger.info("deploy: %s ready at %s in %.1f s", uri, url, elapsed)
    return DeployResult(url=url, app_name=cfg.app_name, model_uri=uri,
                        version=(ready.get("model") or {}).get("version"), ready_after_s=elapsed)


def smoke_records(preprocess_path: str | Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` real test-split flights as API records (input-schema columns only, nulls dropped)."""
    import pandas as pd

    from mlops_ray.preprocess.derive import INPUT_SCHEMA

    df = pd.read_parquet(Path(preprocess_path) / "data" / "test", columns=list(INPUT_SCHEMA))
    sample = df.sample(n=min(n, len(df)), random_state=seed)
    rows = json.loads(sample.to_json(orient="records"))
    return [{k: v for k, v in r.items() if v is not None} for r in rows]


def run_smoke(url: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """POST the records to ``/v1/predict``; returns the JSON answer.

    Raises:
        MlopsRayError: the endpoint did not answer 200 (status and body in the message).
    """
    import requests

    r = requests.post(f"{url}/v1/predict", json={"records": records}, timeout=60)
    if r.status_code != 200:
        raise MlopsRayError(f"smoke: POST {url}/v1/predict answered {r.status_code}: {r.text[:500]}")
    return r.json()
