"""Register: model versions in the MLflow model registry, with aliases champion/challenger.

Vocabulary is MLflow's (``create_model_version``, ``set_registered_model_alias``,
``get_model_version_by_alias``); models are referred to by URI (``models:/flights@champion``,
``models:/flights/3``). Default store: SQLite at ``$MLOPS_RAY_HOME/mlflow.db`` with artifacts
in ``$MLOPS_RAY_HOME/mlartifacts``.

Each version's artifacts (under ``model/``): ``model.skops`` (no pickle), ``feature_spec.json``,
``lookups/`` (weather, planes), ``manifest.json``, ``evaluation.json``, ``version.json`` and
the artifact's SHA-256.

Promotion (until the paired-bootstrap gate lands): the first version becomes ``champion``;
a later one becomes ``champion`` when its test ROC AUC is at least the champion's, else
``challenger``. The reason is recorded as a version tag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlops_ray.config import RegisterConfig
from mlops_ray.errors import RegistryError
from mlops_ray.home import Home

logger = logging.getLogger(__name__)

ARTIFACT_DIR = "model"
_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version as the pipeline and the server see it."""

    name: str
    version: str
    alias: str | None
    uri: str
    run_id: str
    reason: str


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version).

    Raises:
        RegistryError: the URI has another shape.
    """
    m = _URI.match(uri)
    if not m:
        raise RegistryError(f"model URI '{uri}' is not valid; expected models:/NAME@ALIAS or models:/NAME/VERSION "
                            "(e.g. models:/flights@champion).")
    return m.group("name"), m.group("alias"), m.group("version")


def tracking_uri(cfg: RegisterConfig, home: Home) -> str:
    """The configured tracking URI, or SQLite in MLOPS_RAY_HOME."""
    return cfg.tracking_uri or home.mlflow_tracking_uri()


def client(cfg: RegisterConfig, home: Home):
    """An ``MlflowClient`` on the configured store (SQLite schema created on first use)."""
    import mlflow
    from mlflow import MlflowClient

    home.ensure()
    uri = tracking_uri(cfg, home)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(c, cfg: RegisterConfig, home: Home) -> str:
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(cfg.experiment, artifact_location=f"{home.mlflow_artifact_root()}/{cfg.experiment}")


def _sha256_dir(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != "sha256.txt":
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("scikit-learn", "ray", "pyspark", "mlflow", "numpy", "skops"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            pass
    return out


def stage_artifacts(dest: Path, *, model_path: str, preprocess_path: str, evaluation_path: str,
                    version_info: dict[str, Any]) -> str:
    """Lay out one version's artifact folder; returns its SHA-256 (also written to sha256.txt)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, dest / "model.skops")
    shutil.copy(Path(preprocess_path) / "feature_spec.json", dest / "feature_spec.json")
    shutil.copy(Path(preprocess_path) / "data" / "manifest.json", dest / "manifest.json")
    shutil.copytree(Path(preprocess_path) / "lookups", dest / "lookups",
                    ignore=shutil.ignore_patterns("_SUCCESS", ".*.crc"))
    shutil.copy(evaluation_path, dest / "evaluation.json")
    (dest / "version.json").write_text(json.dumps(version_info, indent=2, sort_keys=True, default=str))
    digest = _sha256_dir(dest)
    (dest / "sha256.txt").write_text(digest)
    return digest


def run_register(cfg: RegisterConfig, home: Home, *, model_path: str, preprocess_path: str, evaluation,
                 tune_result, data_fingerprint: str, run_id: str, config_hash: str) -> RegisteredVersion:
    """Log an MLflow run with params, metrics and artifacts, then create a model version and alias it.

    Returns:
        The new version and the alias it received (``champion`` or ``challenger``).
    """
    c = client(cfg, home)
    exp_id = _experiment_id(c, cfg, home)
    run = c.create_run(exp_id, run_name=f"pipeline-{run_id}", tags={"mlops_ray.run_id": run_id})
    rid = run.info.run_id
    try:
        for k, v in {"family": tune_result.family, **{f"{tune_result.family}.{k}": v
                                                      for k, v in tune_result.params.items()}}.items():
            c.log_param(rid, k, v)
        for k, v in evaluation.model.items():
            c.log_metric(rid, f"test_{k}", v)
        c.log_metric(rid, "validation_roc_auc", evaluation.validation_roc_auc)
        for b, m in evaluation.baselines.items():
            c.log_metric(rid, f"baseline_{b}_test_roc_auc", m["roc_auc"])
        info = {
            "name": cfg.model_name, "family": tune_result.family, "params": tune_result.params,
            "threshold": evaluation.threshold, "metrics": {"test": evaluation.model,
                                                           "validation_roc_auc": evaluation.validation_roc_auc},
            "data_fingerprint": data_fingerprint, "pipeline_run_id": run_id, "config_hash": config_hash,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "libraries": _library_versions(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            digest = stage_artifacts(Path(tmp) / ARTIFACT_DIR, model_path=model_path, preprocess_path=preprocess_path,
                                     evaluation_path=evaluation.path, version_info=info)
            c.log_artifacts(rid, str(Path(tmp) / ARTIFACT_DIR), ARTIFACT_DIR)
        c.set_tag(rid, "artifact_sha256", digest)
        c.set_terminated(rid)
    except Exception:
        c.set_terminated(rid, status="FAILED")
        raise

    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(cfg.model_name)
    except MlflowException:
        c.create_registered_model(cfg.model_name)
    source = f"{run.info.artifact_uri}/{ARTIFACT_DIR}"
    mv = c.create_model_version(cfg.model_name, source=source, run_id=rid,
                                tags={"data_fingerprint": data_fingerprint, "artifact_sha256": digest})
    alias, reason = _promotion(c, cfg.model_name, evaluation.model["roc_auc"])
    c.set_registered_model_alias(cfg.model_name, alias, mv.version)
    c.set_model_version_tag(cfg.model_name, mv.version, "promotion_reason", reason)
    logger.info("register: %s version %s -> %s (%s)", cfg.model_name, mv.version, alias, reason)
    return RegisteredVersion(name=cfg.model_name, version=str(mv.version), alias=alias,
                             uri=f"models:/{cfg.model_name}@{alias}", run_id=rid, reason=reason)


def _promotion(c, name: str, test_roc_auc: float) -> tuple[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        champ = c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return "champion", "first version: no champion yet"
    champ_auc = float(c.get_run(champ.run_id).data.metrics.get("test_roc_auc", float("nan")))
    if not (test_roc_auc < champ_auc):
        return "champion", f"test ROC AUC {test_roc_auc:.4f} >= champion v{champ.version}'s {champ_auc:.4f}"
    return "challenger", f"test ROC AUC {test_roc_auc:.4f} < champion v{champ.version}'s {champ_auc:.4f}"


def resolve_version(cfg: RegisterConfig, home: Home, uri: str):
    """The MLflow ``ModelVersion`` a URI points at.

    Raises:
        RegistryError: unknown model, version or alias (the message lists what exists).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    c = client(cfg, home)
    try:
        return c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException:
        try:
            names = [m.name for m in c.search_registered_models()]
        except MlflowException:  # pragma: no cover
            names = []
        raise RegistryError(f"model URI '{uri}' does not resolve in {tracking_uri(cfg, home)}; registered models: "
                            f"{names or 'none'}. Run the pipeline (`mlops-ray run`) or `mlops-ray models list`.") from None


def download_version(cfg: RegisterConfig, home: Home, uri: str, dest: str | Path) -> tuple[Any, Path]:
    """Download a version's artifacts into ``dest`` and verify their SHA-256.

    Returns:
        (ModelVersion, local artifact folder).

    Raises:
        RegistryError: unknown URI, or the artifacts' SHA-256 differs from the recorded one.
    """
    import mlflow

    mv = resolve_version(cfg, home, uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dest),
                                                     tracking_uri=tracking_uri(cfg, home)))
    expected = (mv.tags or {}).get("artifact_sha256")
    actual = _sha256_dir(local)
    if expected and expected != actual:
        raise RegistryError(f"artifacts of {mv.name} v{mv.version} fail verification: SHA-256 {actual}, "
                            f"recorded {expected}. The files at {mv.source} were changed; re-register the model.")
    return mv, local


def list_versions(cfg: RegisterConfig, home: Home) -> list[dict[str, Any]]:
    """Every version of every registered model: name, version, aliases, test ROC AUC, created."""
    c = client(cfg, home)
    rows = []
    for rm in c.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for a, v in (rm.aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in c.search_model_versions(f"name='{rm.name}'"):
            metrics = c.get_run(mv.run_id).data.metrics if mv.run_id else {}
            rows.append({"name": rm.name, "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                         "test_roc_auc": metrics.get("test_roc_auc"),
                         "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc)
                         .isoformat(timespec="seconds"),
                         "reason": (mv.tags or {}).get("promotion_reason")})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))
