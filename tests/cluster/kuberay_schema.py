"""Offline checks of KubeRay manifests (ray.io/v1): field names, required fields, embedded Ray configs.

There is no Kubernetes API server in the tests, so each manifest is checked against:

- the field names of KubeRay's CRD API reference (fields of KubeRay v1.6/v1.7):
  https://docs.ray.io/en/master/cluster/kubernetes/references/api.html and
  github.com/ray-project/kuberay docs/reference/api.md. A key outside these is a typo that the API
  server would drop silently (structural-schema pruning) or reject under ``kubectl --validate=strict``;
- what the CRDs require (``ray-operator/config/crd/bases/ray.io_*.yaml``): RayCronJob needs
  ``schedule`` and ``jobTemplate``; a worker group needs ``groupName``; a pod template needs
  containers with ``name`` and ``image``; ``rayStartParams`` is a map of string to string;
- Ray's own validators for the embedded strings: ``serveConfigV2`` with
  ``ray.serve.schema.ServeDeploySchema`` (plus a closed-key walk, because that model ignores unknown
  keys) and the import path resolved; ``runtimeEnvYAML`` with ``ray.runtime_env.RuntimeEnv``;
- the repository: the entry point's script and ``--config`` file exist, and the config loads.

Every check raises ``ManifestError`` naming the path of the bad field, what was expected and what came.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import ray
import yaml
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]

#: Where cluster/kuberay/Dockerfile puts the repository's code (the RayJob's working_dir).
IMAGE_WORKDIR = "/home/ray/mlops_ray"

#: ray.io/v1 field names per type (KubeRay API reference, fields of v1.6/v1.7).
FIELDS: dict[str, set[str]] = {
    "RayClusterSpec": {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                       "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
                       "workerGroupSpecs", "authOptions"},
    "AutoscalerOptions": {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                          "upscalingMode", "version", "env", "envFrom", "volumeMounts"},
    "AuthOptions": {"mode", "secretName", "enableK8sTokenAuth"},
    "HeadGroupSpec": {"template", "headService", "enableIngress", "rayStartParams", "serviceType"},
    "WorkerGroupSpec": {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                        "rayStartParams", "template", "scaleStrategy", "numOfHosts"},
    "RayJobSpec": {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                   "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                   "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                   "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"},
    "RayServiceSpec": {"serveService", "upgradeStrategy", "serveConfigV2", "rayClusterConfig",
                       "excludeHeadPodFromServeSvc", "serviceUnhealthySecondThreshold",
                       "deploymentUnhealthySecondThreshold"},
    "RayCronJobSpec": {"schedule", "jobTemplate", "suspend", "timeZone"},
}
SPEC_TYPE = {"RayCluster": "RayClusterSpec", "RayJob": "RayJobSpec", "RayService": "RayServiceSpec",
             "RayCronJob": "RayCronJobSpec"}
#: Ray token authentication needs Ray 2.52.0+ (KubeRay's authOptions checks spec.rayVersion).
TOKEN_AUTH_MIN_RAY = Version("2.52.0")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class ManifestError(ValueError):
    """A manifest that KubeRay or Ray would reject or silently misread."""


def _closed(obj: Any, type_name: str, where: str) -> dict:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where} must be a mapping ({type_name}); got {type(obj).__name__}.")
    unknown = sorted(set(obj) - FIELDS[type_name])
    if unknown:
        raise ManifestError(f"{where}: unknown {type_name} field(s) {unknown}; known: {sorted(FIELDS[type_name])}.")
    return obj


def _int(obj: dict, key: str, where: str, minimum: int = 0) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestError(f"{where}.{key} must be an integer >= {minimum}; got {value!r}.")
    return value


def check_pod_template(template: Any, where: str) -> list[dict]:
    """The containers of a PodTemplateSpec; each needs a DNS-label ``name`` and an ``image``."""
    containers = (((template or {}).get("spec") or {}).get("containers")) if isinstance(template, dict) else None
    if not containers or not isinstance(containers, list):
        raise ManifestError(f"{where}.template.spec.containers must be a non-empty list; got {containers!r}.")
    for i, c in enumerate(containers):
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or not DNS_LABEL.match(name):
            raise ManifestError(f"{where}.template.spec.containers[{i}].name must be a DNS-1123 label; got {name!r}.")
        if not isinstance(c.get("image"), str) or not c["image"]:
            raise ManifestError(f"{where}.template.spec.containers[{i}].image is required; got {c.get('image')!r}.")
    return containers


def check_ray_start_params(params: Any, where: str) -> dict[str, str]:
    """``rayStartParams``: string keys and string values, with the metrics export port set."""
    if not isinstance(params, dict):
        raise ManifestError(f"{where}.rayStartParams must be a mapping; got {params!r}.")
    for k, v in params.items():
        if not isinstance(v, str):
            raise ManifestError(f"{where}.rayStartParams.{k} must be a string (quote it); got {v!r} "
                                f"({type(v).__name__}).")
    if "metrics-export-port" not in params:
        raise ManifestError(f"{where}.rayStartParams must set metrics-export-port (Prometheus scrapes it); "
                            f"got keys {sorted(params)}.")
    return params


def check_cluster_spec(spec: Any, where: str) -> None:
    """A RayClusterSpec: closed keys, Ray version, auth, autoscaler, head and worker groups."""
    _closed(spec, "RayClusterSpec", where)
    if spec.get("rayVersion") != ray.__version__:
        raise ManifestError(f"{where}.rayVersion must equal the Ray of the image and clients ({ray.__version__}); "
                            f"got {spec.get('rayVersion')!r}.")
    auth = spec.get("authOptions")
    if auth is not None:
        _closed(auth, "AuthOptions", f"{where}.authOptions")
        if auth.get("mode") not in ("disabled", "token"):
            raise ManifestError(f"{where}.authOptions.mode must be 'disabled' or 'token'; got {auth.get('mode')!r}.")
        if auth.get("mode") == "token" and Version(spec["rayVersion"]) < TOKEN_AUTH_MIN_RAY:
            raise ManifestError(f"{where}.authOptions.mode 'token' needs rayVersion >= {TOKEN_AUTH_MIN_RAY}; "
                                f"got {spec['rayVersion']}.")
    if not isinstance(spec.get("enableInTreeAutoscaling", False), bool):
        raise ManifestError(f"{where}.enableInTreeAutoscaling must be true or false; "
                            f"got {spec['enableInTreeAutoscaling']!r}.")
    if "autoscalerOptions" in spec:
        opts = _closed(spec["autoscalerOptions"], "AutoscalerOptions", f"{where}.autoscalerOptions")
        if opts.get("upscalingMode", "Default") not in ("Conservative", "Default", "Aggressive"):
            raise ManifestError(f"{where}.autoscalerOptions.upscalingMode must be Conservative, Default or "
                                f"Aggressive; got {opts['upscalingMode']!r}.")
    head = _closed(spec.get("headGroupSpec"), "HeadGroupSpec", f"{where}.headGroupSpec")
    check_ray_start_params(head.get("rayStartParams"), f"{where}.headGroupSpec")
    check_pod_template(head.get("template"), f"{where}.headGroupSpec")
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        raise ManifestError(f"{where}.workerGroupSpecs must be a non-empty list; got {groups!r}.")
    names = set()
    for i, group in enumerate(groups):
        w = f"{where}.workerGroupSpecs[{i}]"
        _closed(group, "WorkerGroupSpec", w)
        name = group.get("groupName")
        if not isinstance(name, str) or not DNS_LABEL.match(name) or name in names:
            raise ManifestError(f"{w}.groupName must be a unique DNS-1123 label; got {name!r}.")
        names.add(name)
        lo, n, hi = _int(group, "minReplicas", w), _int(group, "replicas", w), _int(group, "maxReplicas", w, 1)
        if not lo <= n <= hi:
            raise ManifestError(f"{w}: minReplicas <= replicas <= maxReplicas must hold; "
                                f"got minReplicas={lo}, replicas={n}, maxReplicas={hi}.")
        check_ray_start_params(group.get("rayStartParams"), w)
        check_pod_template(group.get("template"), w)


def check_runtime_env_yaml(text: Any, where: str):
    """Parse ``runtimeEnvYAML`` and validate it with Ray's ``RuntimeEnv``.

    The image path ``IMAGE_WORKDIR`` stands for the repository (cluster/kuberay/Dockerfile copies
    it there), so Ray's check that a local ``working_dir`` exists runs against the checkout.
    """
    from ray.runtime_env import RuntimeEnv

    if not isinstance(text, str):
        raise ManifestError(f"{where} must be a YAML string (use `|`); got {type(text).__name__}.")
    parsed = yaml.safe_load(text)
    if not isinstance(parsed, dict):
        raise ManifestError(f"{where} must hold a mapping; got {parsed!r}.")
    unknown = sorted(set(parsed) - RuntimeEnv.known_fields)
    if unknown:
        raise ManifestError(f"{where}: unknown runtime_env field(s) {unknown}; Ray knows "
                            f"{sorted(f for f in RuntimeEnv.known_fields if not f.startswith('_'))}.")
    env = dict(parsed)
    if env.get("working_dir") == IMAGE_WORKDIR:
        env["working_dir"] = str(REPO)
    try:
        return RuntimeEnv(**env)
    except (TypeError, ValueError) as err:
        raise ManifestError(f"{where}: Ray rejects the runtime environment: {err}") from None


def check_entrypoint(entrypoint: Any, where: str) -> None:
    """``python SCRIPT [--config PATH]``: the script exists in the repo and the config loads."""
    from mlops_ray.config import load_config

    argv = shlex.split(entrypoint) if isinstance(entrypoint, str) else []
    if len(argv) < 2 or argv[0] not in ("python", "python3"):
        raise ManifestError(f"{where}.entrypoint must be `python SCRIPT ...`; got {entrypoint!r}.")
    if not (REPO / argv[1]).is_file():
        raise ManifestError(f"{where}.entrypoint runs {argv[1]}, which is not a file of the repository "
                            f"(paths are relative to the working_dir {IMAGE_WORKDIR}).")
    if "--config" in argv:
        load_config(REPO / argv[argv.index("--config") + 1])


def check_job_spec(spec: Any, where: str) -> None:
    """A RayJobSpec that runs the pipeline on its own cluster and deletes it afterwards."""
    _closed(spec, "RayJobSpec", where)
    check_entrypoint(spec.get("entrypoint"), where)
    env = check_runtime_env_yaml(spec.get("runtimeEnvYAML"), f"{where}.runtimeEnvYAML")
    home = (env.get("env_vars") or {}).get("MLOPS_RAY_HOME", "")
    if not home.startswith("/"):
        raise ManifestError(f"{where}.runtimeEnvYAML must set env_vars.MLOPS_RAY_HOME to an absolute path "
                            f"(shared storage); got {home!r}.")
    if spec.get("shutdownAfterJobFinishes") is not True:
        raise ManifestError(f"{where}.shutdownAfterJobFinishes must be true (delete the cluster after the run); "
                            f"got {spec.get('shutdownAfterJobFinishes')!r}.")
    _int(spec, "ttlSecondsAfterFinished", where)
    if spec.get("submissionMode", "K8sJobMode") not in ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"):
        raise ManifestError(f"{where}.submissionMode is not a KubeRay mode; got {spec['submissionMode']!r}.")
    check_cluster_spec(spec.get("rayClusterSpec"), f"{where}.rayClusterSpec")


def _unknown_serve_keys(raw: dict) -> list[str]:
    """Keys Ray Serve's config models do not define (they ignore such keys instead of failing)."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (DeploymentSchema, HTTPOptionsSchema, RayActorOptionsSchema,
                                  ServeApplicationSchema, ServeDeploySchema)

    bad: list[str] = []

    def closed(obj: Any, model, where: str) -> None:
        if isinstance(obj, dict):
            known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
            bad.extend(f"{where}.{k}" for k in obj if k not in known)

    closed(raw, ServeDeploySchema, "serveConfigV2")
    closed(raw.get("http_options"), HTTPOptionsSchema, "serveConfigV2.http_options")
    for i, app in enumerate(raw.get("applications") or []):
        closed(app, ServeApplicationSchema, f"serveConfigV2.applications[{i}]")
        for j, dep in enumerate((app or {}).get("deployments") or []):
            w = f"serveConfigV2.applications[{i}].deployments[{j}]"
            closed(dep, DeploymentSchema, w)
            closed((dep or {}).get("autoscaling_config"), AutoscalingConfig, f"{w}.autoscaling_config")
            closed((dep or {}).get("ray_actor_options"), RayActorOptionsSchema, f"{w}.ray_actor_options")
    return bad


def check_serve_config_v2(text: Any, where: str):
    """Validate ``serveConfigV2`` as Ray Serve does, resolve and build each app, match deployment names.

    Returns:
        The ``ServeDeploySchema``.
    """
    from ray import serve
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    if not isinstance(text, str):
        raise ManifestError(f"{where} must be a YAML string (use `|`); got {type(text).__name__}.")
    raw = yaml.safe_load(text)
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except Exception as err:  # pydantic.ValidationError
        raise ManifestError(f"{where}: Ray Serve rejects it: {err}") from None
    unknown = _unknown_serve_keys(raw)
    if unknown:
        raise ManifestError(f"{where}: keys Ray Serve does not know (it would ignore them): {unknown}.")
    for app in schema.applications:
        w = f"{where} application {app.name!r}"
        module_name, _, attr = app.import_path.partition(":")
        try:
            module = importlib.import_module(module_name)
            builder = getattr(module, attr)
        except (ImportError, AttributeError) as err:
            raise ManifestError(f"{w}: import_path {app.import_path!r} does not resolve: {err}") from None
        built = builder(app.args) if callable(builder) and not isinstance(builder, serve.Application) else builder
        if not isinstance(built, serve.Application):
            raise ManifestError(f"{w}: {app.import_path} must be or build a serve.Application; got {built!r}.")
        defined = {d.name for d in vars(module).values() if isinstance(d, serve.Deployment)}
        for dep in app.deployments:
            if dep.name not in defined:
                raise ManifestError(f"{w}: deployment {dep.name!r} is not defined in {module_name} "
                                    f"(deployments there: {sorted(defined)}); Serve would reject the config.")
            if isinstance(dep.autoscaling_config, dict):
                try:
                    AutoscalingConfig.model_validate(dep.autoscaling_config)
                except Exception as err:
                    raise ManifestError(f"{w} deployment {dep.name}: autoscaling_config: {err}") from None
        check_runtime_env_yaml(yaml.safe_dump(app.runtime_env), f"{w} runtime_env")
    return schema


_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_CRON_NAMES = {"jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10,
               "nov": 11, "dec": 12, "sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def check_cron(expr: Any, where: str) -> None:
    """A standard 5-field cron expression (or descriptor), as KubeRay's cron parser takes it."""
    if not isinstance(expr, str):
        raise ManifestError(f"{where} must be a string; got {expr!r}.")
    if expr.strip() in _CRON_DESCRIPTORS:
        return
    fields = expr.split()
    if len(fields) != 5:
        raise ManifestError(f"{where} must have 5 fields (minute hour day-of-month month day-of-week); "
                            f"got {len(fields)} in {expr!r}.")
    for text, (name, lo, hi) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            rng, _, step = part.partition("/")
            if step and not step.isdigit():
                raise ManifestError(f"{where}: bad step {step!r} in the {name} field of {expr!r}.")
            if rng in ("*", "?"):
                continue
            for v in rng.split("-", 1):
                n = _CRON_NAMES.get(v.lower(), int(v) if v.isdigit() else None)
                if n is None or not lo <= n <= hi:
                    raise ManifestError(f"{where}: {v!r} is not a valid {name} ({lo}-{hi}) in {expr!r}.")


def check_manifest(doc: Any, where: str) -> dict:
    """Check one ray.io/v1 manifest by kind; returns it."""
    if not isinstance(doc, dict) or doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") not in SPEC_TYPE:
        raise ManifestError(f"{where}: expected apiVersion ray.io/v1 and kind in {sorted(SPEC_TYPE)}; got "
                            f"{(doc or {}).get('apiVersion')!r} / {(doc or {}).get('kind')!r}.")
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name):
        raise ManifestError(f"{where}.metadata.name must be a DNS-1123 subdomain; got {name!r}.")
    kind, spec = doc["kind"], doc.get("spec")
    _closed(spec, SPEC_TYPE[kind], f"{where}.spec")
    if kind == "RayCluster":
        check_cluster_spec(spec, f"{where}.spec")
    elif kind == "RayJob":
        check_job_spec(spec, f"{where}.spec")
    elif kind == "RayService":
        check_serve_config_v2(spec.get("serveConfigV2"), f"{where}.spec.serveConfigV2")
        check_cluster_spec(spec.get("rayClusterConfig"), f"{where}.spec.rayClusterConfig")
    else:  # RayCronJob: jobTemplate is a RayJobSpec without a `spec:` wrapper; both fields required
        for key in ("schedule", "jobTemplate"):
            if key not in spec:
                raise ManifestError(f"{where}.spec.{key} is required for a RayCronJob.")
        check_cron(spec["schedule"], f"{where}.spec.schedule")
        if not isinstance(spec.get("suspend", False), bool):
            raise ManifestError(f"{where}.spec.suspend must be true or false; got {spec['suspend']!r}.")
        check_job_spec(spec["jobTemplate"], f"{where}.spec.jobTemplate")
    return doc
