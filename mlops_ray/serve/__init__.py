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

from mlops_ray.config import Config, DeployConfig, MonitorConfig, RegisterConfig
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


def serving_http(cfg: DeployConfig) -> DeployConfig:
    """``cfg`` with the host and port Serve's HTTP proxies really use on the connected cluster.

    Serve fixes its HTTP options when it first starts; a later ``serve.start`` with other options (another
    config, or none given to ``models promote``) changes nothing, so the URL must come from the running
    Serve. Read through Serve's controller client (``ray.serve.context._get_global_client``, private: no
    public call returns it); ``cfg`` unchanged when it cannot be read.
    """
    try:
        from ray.serve.context import _get_global_client

        opts = _get_global_client().http_config
        host, port = opts.host, int(opts.port)
    except Exception:  # noqa: BLE001 - private API moved: keep the configured address
        return cfg
    if (host, port) != (cfg.host, cfg.port):
        logger.warning("deploy: Serve already runs with HTTP on %s:%d (deploy.host/port say %s:%d); the application "
                       "answers there", host, port, cfg.host, cfg.port)
        return cfg.model_copy(update={"host": host, "port": port})
    return cfg


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
            if (expect_version is not None and r.status_code == 200
                    and r.json().get("reload_failed_version") == expect_version):  # reconfigure kept the old one
                served = (r.json().get("model") or {}).get("version")
                raise MlopsRayError(f"deploy: the replicas at {url} failed to load v{expect_version} and still serve "
                                    f"v{served}; GET {url}/v1/model shows last_reload_error. Fix or roll back the "
                                    "registry alias (`mlops-ray models rollback NAME`).")
            if r.status_code == 503 and "not ready:" in r.text and "model is loading" not in r.text:
                break  # the replica reported a load error: it will not fix itself
        except requests.RequestException as e:
            last = str(e)
        time.sleep(0.5)
    raise MlopsRayError(f"deploy: {url}/readyz did not answer 200 within {timeout_s:.0f} s; last answer: {last}")


def run_deploy(cfg: DeployConfig, register_cfg: RegisterConfig, ray, home: Home, model_uri: str | None = None,
               monitor_cfg: MonitorConfig | None = None) -> DeployResult:
    """Start (or update) the Serve application serving ``model_uri`` and wait until it is ready.

    Args:
        ray: the connected ``ray`` module (Serve runs in that cluster).
        model_uri: default ``models:/<register.model_name>@<deploy.model_alias>``.
        monitor_cfg: the ``monitor`` slice: online drift on (replicas count, the drift monitor actor is
            started or pointed at the new champion's training reference); None = off.
    """
    from ray import serve

    from mlops_ray.errors import RegistryError
    from mlops_ray.registry import resolve_version
    from mlops_ray.registry.uri import parse_model_uri
    from mlops_ray.serve.app import model_server, rollout_user_config

    uri = model_uri or f"models:/{register_cfg.model_name}@{cfg.model_alias}"
    name, alias, _ = parse_model_uri(uri)
    mv = resolve_version(register_cfg, home, uri)  # pin the version: a promotion changes what is deployed
    pinned = f"models:/{name}/{mv.version}"
    challenger = None
    if cfg.canary_percent > 0 or cfg.shadow:
        try:
            challenger = f"models:/{name}/{resolve_version(register_cfg, home, f'models:/{name}@challenger').version}"
        except RegistryError:
            logger.warning("deploy: canary/shadow configured but '%s' has no challenger alias; serving v%s only",
                           name, mv.version)
    # the versions travel in the user_config: a promotion reconfigures the live replicas instead of replacing them
    rollout = rollout_user_config(pinned, alias, challenger, cfg.canary_percent, cfg.shadow)
    t0 = time.monotonic()
    serve.start(proxy_location=cfg.proxy_location, http_options={"host": cfg.host, "port": cfg.port})
    if monitor_cfg is not None:
        start_monitor(cfg, register_cfg, ray, home, pinned, monitor_cfg)
    serve.run(model_server(cfg, register_cfg, home, uri if alias else pinned, alias, rollout=rollout,
                           monitor_cfg=monitor_cfg),
              name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    url = endpoint_url(serving_http(cfg))
    ready = wait_ready(url, cfg.ready_timeout_s, expect_version=str(mv.version))
    elapsed = time.monotonic() - t0
    logger.info("deploy: %s ready at %s in %.1f s", uri, url, elapsed)
    return DeployResult(url=url, app_name=cfg.app_name, model_uri=uri,
                        version=(ready.get("model") or {}).get("version"), ready_after_s=elapsed)


def start_monitor(cfg: DeployConfig, register_cfg: RegisterConfig, ray, home: Home, model_uri: str,
                  monitor_cfg: MonitorConfig):
    """Start (or re-point) the drift monitor actor at ``model_uri``'s training reference; returns its handle.

    Raises:
        RegistryError: the version cannot be downloaded.
        FileNotFoundError: the version has no ``reference_stats.json`` (registered before drift references).
    """
    import tempfile

    from mlops_ray.monitor.online import DriftReference, monitor_actor_name, start_drift_monitor
    from mlops_ray.registry import download_version
    from mlops_ray.serve.prediction_log import sqlite_log_path

    with tempfile.TemporaryDirectory() as tmp:
        _, local = download_version(register_cfg, home, model_uri, tmp)
        reference = DriftReference.from_model_dir(local)
    log = cfg.prediction_log_url or sqlite_log_path(home)
    return start_drift_monitor(ray, monitor_cfg, reference, log, name=monitor_actor_name(cfg.app_name),
                               prediction_log_password_env=cfg.prediction_log_password_env)


#: First lines of a generated Serve config file.
SERVE_CONFIG_HEADER = """\
# Ray Serve config of the model server, generated by
#   mlops-ray deploy --write-serve-config cluster/serve_config.yaml [--config PATH]
# from the pipeline config's deploy slice (regenerate it rather than edit it; a test compares them).
# Same shape as `serve build` writes: the deployment's options (autoscaling_config, ray_actor_options)
# are listed, and Serve applies them over the code's. Serve it with
#   serve run cluster/serve_config.yaml                              (local, foreground)
#   serve deploy cluster/serve_config.yaml -a http://<head>:8265     (a running cluster)
# MLOPS_RAY_HOME must point at the home the pipeline registered into (shared storage on a cluster).
"""


def serve_deploy_config(cfg: Config, model_uri: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    """The ``serve deploy`` config of the model server (Ray Serve's ``ServeDeploySchema`` as a dict).

    Built the way ``serve build`` builds one (``ray.serve.scripts``): the application that
    :func:`mlops_ray.serve.app.build_app` returns is built, and each deployment's options come from
    ``deployment_to_schema``. ``serve build`` itself cannot be used: it takes an application object,
    not an application builder with arguments.

    Args:
        cfg: the whole pipeline :class:`~mlops_ray.config.Config` (``deploy`` and ``register`` slices used).
        model_uri: default ``models:/<register.model_name>@<deploy.model_alias>``.
        config_path: the pipeline YAML the cluster's ``build_app`` should load (its ``config`` argument);
            None = the bundled config.

    Raises:
        pydantic.ValidationError: Ray Serve's schema rejects the result (a bug).
    """
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema
    from ray.serve.scripts import deployment_to_schema

    from mlops_ray.registry.uri import parse_model_uri
    from mlops_ray.serve.app import model_server

    uri = model_uri or f"models:/{cfg.register_.model_name}@{cfg.deploy.model_alias}"
    built = build_app(model_server(cfg.deploy, cfg.register_, Home.resolve("/"), uri, parse_model_uri(uri)[1]),
                      name=cfg.deploy.app_name)
    args = {"model_uri": uri, **({"config": str(config_path)} if config_path else {})}
    app = ServeApplicationSchema(name=cfg.deploy.app_name, route_prefix=cfg.deploy.route_prefix,
                                 import_path="mlops_ray.serve.app:build_app", args=args, runtime_env={},
                                 deployments=[deployment_to_schema(d) for d in built.deployments])
    out = {"proxy_location": cfg.deploy.proxy_location,
           "http_options": {"host": cfg.deploy.host, "port": cfg.deploy.port},
           "applications": [app.model_dump(exclude_unset=True)]}
    ServeDeploySchema.model_validate(out)
    return out


def serve_config_yaml(cfg: Config, model_uri: str | None = None, config_path: str | None = None) -> str:
    """:func:`serve_deploy_config` as the YAML text ``serve deploy`` reads, with :data:`SERVE_CONFIG_HEADER`."""
    import yaml
    from ray.serve.scripts import ServeDeploySchemaDumper

    body = yaml.dump(serve_deploy_config(cfg, model_uri, config_path), Dumper=ServeDeploySchemaDumper,
                     default_flow_style=False, sort_keys=False, width=100, indent=2)
    return SERVE_CONFIG_HEADER + body.rstrip("\n") + "\n"


def switch_if_running(cfg: DeployConfig, register_cfg: RegisterConfig, home: Home, address: str | None = None,
                      monitor_cfg: MonitorConfig | None = None) -> str | None:
    """After a promotion or rollback: switch a running application onto the new champion (and challenger).

    Connects to the Ray cluster at ``address`` (or RAY_ADDRESS, or a local Ray found on this
    machine); if application ``cfg.app_name`` runs there, it is redeployed with the aliases
    resolved anew. Only the deployment's ``user_config`` changes, so Serve calls ``reconfigure``
    on the live replicas, which load the new version and swap it in without a failed request.
    Returns the version now served, or None when no such deployment runs.

    Raises:
        MlopsRayError: the replicas failed to load the new version (they keep serving the old one).
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
        return run_deploy(cfg, register_cfg, ray, home, monitor_cfg=monitor_cfg).version
    finally:
        if connected_here:
            ray.shutdown()


def smoke_records(preprocess_path: str | Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` real test-split rows as API records (input-schema columns only, nulls dropped)."""
    import pandas as pd

    from mlops_ray.preprocess import load_feature_spec

    df = pd.read_parquet(Path(preprocess_path) / "data" / "test",
                         columns=list(load_feature_spec(preprocess_path).inputs))
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
