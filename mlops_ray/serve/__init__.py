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
    """Base URL of the application, e.g. ``http://127.0.0.1:8000`` (plus ``deploy.route_prefix`` when not ``/``)."""
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def wait_ready(url: str, timeout_s: float, expect_version: str | None = None) -> dict[str, Any]:
    """Poll ``GET {url}/readyz`` until 200 (from ``expect_version`` when given) or ``timeout_s``.

    Raises:
        MlopsRayError: not ready in time (with the last answer).
    """
    import requests

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200 and (expect_version is None
                                         or (r.json().get("model") or {}).get("version") == expect_version):
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

    from mlops_ray.registry import resolve_version
    from mlops_ray.registry.uri import parse_model_uri
    from mlops_ray.serve.app import model_server

    uri = model_uri or f"models:/{register_cfg.model_name}@{cfg.model_alias}"
    name, alias, _ = parse_model_uri(uri)
    mv = resolve_version(register_cfg, home, uri)  # pin the version: a promotion changes what is deployed
    pinned = f"models:/{name}/{mv.version}"
    t0 = time.monotonic()
    serve.start(proxy_location=cfg.proxy_location, http_options={"host": cfg.host, "port": cfg.port})
    serve.run(model_server(cfg, register_cfg, home, pinned, alias), name=cfg.app_name, route_prefix=cfg.route_prefix,
              blocking=False)
    url = endpoint_url(cfg)
    ready = wait_ready(url, cfg.ready_timeout_s, expect_version=str(mv.version))
    elapsed = time.monotonic() - t0
    logger.info("deploy: %s ready at %s in %.1f s", uri, url, elapsed)
    return DeployResult(url=url, app_name=cfg.app_name, model_uri=uri,
                        version=(ready.get("model") or {}).get("version"), ready_after_s=elapsed)


def switch_if_running(cfg: DeployConfig, register_cfg: RegisterConfig, home: Home, address: str | None = None) -> str | None:
    """After a promotion or rollback: redeploy a running application onto the new champion.

    Connects to the Ray cluster at ``address`` (or RAY_ADDRESS, or a local Ray found on this
    machine); if application ``cfg.app_name`` runs there, it is redeployed with the alias
    resolved anew, and Serve rolls its replicas over to the new version. Returns the version
    now served, or None when no such deployment runs.
    """
    import os

    import ray
    from ray import serve

    connected_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", logging_level=logging.ERROR,
                     log_to_driver=False)
            connected_here = True
        except (ConnectionError, RuntimeError):
            return None
    try:
        apps = serve.status().applications
        if cfg.app_name not in apps:
            return None
        return run_deploy(cfg, register_cfg, ray, home).version
    finally:
        if connected_here:
            ray.shutdown()


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
