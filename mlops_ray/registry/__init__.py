"""Register: model versions in the MLflow model registry, aliases ``champion``/``challenger``,
the promotion gate, promote and rollback.

Vocabulary is MLflow's (``create_model_version``, ``set_registered_model_alias``,
``get_model_version_by_alias``); models are referred to by URI (``models:/flights@champion``,
``models:/flights/3``). Store: SQLite at ``$MLOPS_RAY_HOME/mlflow.db`` by default, or any
MLflow tracking URI (``postgresql://...``, ``http://tracking-server:5000``).

Each version is an MLflow pyfunc model defined from code (:mod:`.pyfunc_model`; no pickle)
that takes raw records, so ``mlflow models predict -m models:/flights/1`` works. Its
``model_dir`` artifact holds ``model.skops`` (or ``model.keras`` for the Keras MLP), ``feature_spec.json``, ``lookups/``,
``manifest.json``, ``evaluation.json``, ``explain.json`` and ``version.json``; the SHA-256 of
that folder, the data fingerprint, the git commit, the config hash and the library versions
are version tags. Loading verifies the SHA-256 and the scikit-learn/skops versions.

Promotion gate: a new version becomes ``champion`` when there is none, or when the lower
bound of the paired-bootstrap interval (``promotion_bootstrap`` resamples of the candidate's
frozen test rows, both models scored from raw records through their own feature specs) of
(candidate ROC AUC - champion ROC AUC) exceeds ``promotion_margin``; otherwise it becomes
``challenger``. The reason is recorded on the version (tag ``promotion_reason``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mlops_ray.config import RegisterConfig
from mlops_ray.errors import RegistryError
from mlops_ray.home import Home
from mlops_ray.registry.uri import parse_model_uri

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model"
MODEL_DIR = "model_dir"
CHECKED_LIBRARIES = ("scikit-learn", "skops")  # must match major.minor to load a version
RECORDED_LIBRARIES = ("scikit-learn", "skops", "tensorflow-cpu", "keras", "ray", "pyspark", "mlflow", "numpy", "pandas")
HISTORY_TAG = "champion_history"

__all__ = ["RegisteredVersion", "run_register", "parse_model_uri", "resolve_version", "download_version",
           "list_versions", "promote", "rollback", "tracking_uri", "experiment_id"]


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered model version as the pipeline and the server see it."""

    name: str
    version: str
    alias: str | None
    uri: str
    run_id: str
    reason: str
    cache_hit: bool = False


def tracking_uri(cfg: RegisterConfig, home: Home) -> str:
    """The configured tracking URI, or SQLite in MLOPS_RAY_HOME."""
    return cfg.tracking_uri or home.mlflow_tracking_uri()


def client(cfg: RegisterConfig, home: Home):
    """An ``MlflowClient`` on the configured store (schema created on first use)."""
    import mlflow
    from mlflow import MlflowClient

    home.ensure()
    uri = tracking_uri(cfg, home)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c, cfg: RegisterConfig, home: Home) -> str:
    """The id of the MLflow experiment ``register.experiment`` (created with its artifact root when missing)."""
    exp = c.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    root = cfg.artifact_root or home.mlflow_artifact_root()
    return c.create_experiment(cfg.experiment, artifact_location=f"{root}/{cfg.experiment}")


def sha256_dir(path: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file below ``path`` (sorted)."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a version records (missing ones left out)."""
    import importlib.metadata as md

    out = {}
    for pkg in RECORDED_LIBRARIES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str:
    """Commit of the source checkout mlops_ray runs from, or 'unknown'."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=10, check=False)
        return res.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def stage_artifacts(dest: Path, *, model_path: str, preprocess_path: str, extra_files: dict[str, str],
                    version_info: dict[str, Any]) -> str:
    """Lay out one version's ``model_dir``; returns its SHA-256."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, dest / Path(model_path).name)  # model.skops or model.keras
    shutil.copy(Path(preprocess_path) / "feature_spec.json", dest / "feature_spec.json")
    shutil.copy(Path(preprocess_path) / "data" / "manifest.json", dest / "manifest.json")
    if (Path(preprocess_path) / "reference_stats.json").is_file():  # the drift reference, for monitoring
        shutil.copy(Path(preprocess_path) / "reference_stats.json", dest / "reference_stats.json")
    if (Path(preprocess_path) / "lookups").is_dir():  # the flights recipe's lookup tables
        shutil.copytree(Path(preprocess_path) / "lookups", dest / "lookups",
                        ignore=shutil.ignore_patterns("_SUCCESS", ".*.crc"))
    for name, src in extra_files.items():
        shutil.copy(src, dest / name)
    (dest / "version.json").write_text(json.dumps(version_info, indent=2, sort_keys=True, default=str))
    return sha256_dir(dest)


def _signature(preprocess_path: str):
    """MLflow signature of the pyfunc model: the serving input schema of the version's feature spec."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from mlops_ray.preprocess import load_feature_spec

    kinds = {"integer": "long", "number": "double", "string": "string", "boolean": "boolean"}
    cols = [ColSpec("double" if (k == "integer" and not req) else kinds[k], name, required=req)
            for name, (k, req) in load_feature_spec(preprocess_path).inputs.items()]
    return ModelSignature(inputs=Schema(cols), outputs=Schema([ColSpec("double", "probability"), ColSpec("long", "label")]))


def _flat_params(tune_result) -> dict[str, Any]:
    return {"family": tune_result.family, **{f"{tune_result.family}.{k}": v for k, v in tune_result.params.items()}}


def run_register(cfg: RegisterConfig, home: Home, *, model_path: str, preprocess_path: str, evaluation,
                 tune_result, data_fingerprint: str, run_id: str, config_hash: str,
                 explain_path: str | None = None) -> RegisteredVersion:
    """Log an MLflow run and a pyfunc model, create a model version and apply the promotion gate.

    Returns:
        The new version, the alias it received (``champion``/``challenger``) and why.
    """
    import mlflow

    c = client(cfg, home)
    model_sha = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()
    same = _same_version(c, cfg.model_name, model_sha, data_fingerprint)
    if same is not None:  # re-run with nothing changed: no duplicate version
        aliases = [a for a, v in (c.get_registered_model(cfg.model_name).aliases or {}).items() if str(v) == str(same.version)]
        alias = "champion" if "champion" in aliases else (aliases[0] if aliases else None)
        reason = f"unchanged: v{same.version} has the same model file and data fingerprint; not registered again"
        logger.info("register: %s", reason)
        return RegisteredVersion(name=cfg.model_name, version=str(same.version), alias=alias,
                                 uri=f"models:/{cfg.model_name}/{same.version}", run_id=same.run_id, reason=reason,
                                 cache_hit=True)
    exp_id = experiment_id(c, cfg, home)
    libs = library_versions()
    commit = git_commit()
    info = {
        "name": cfg.model_name, "family": tune_result.family, "params": tune_result.params,
        "threshold": evaluation.threshold,
        "metrics": {"test": evaluation.model, "test_intervals": evaluation.intervals,
                    "validation_roc_auc": evaluation.validation_roc_auc},
        "data_fingerprint": data_fingerprint, "pipeline_run_id": run_id, "config_hash": config_hash,
        "git_commit": commit, "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "libraries": libs,
    }
    extra = {"evaluation.json": evaluation.path}
    if explain_path:
        extra["explain.json"] = explain_path
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / MODEL_DIR
        digest = stage_artifacts(staged, model_path=model_path, preprocess_path=preprocess_path, extra_files=extra,
                                 version_info=info)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"pipeline-{run_id}",
                              tags={"mlops_ray.run_id": run_id}) as run:
            mlflow.log_params(_flat_params(tune_result))
            mlflow.log_metrics({f"test_{k}": v for k, v in evaluation.model.items() if v is not None})
            if evaluation.validation_roc_auc is not None:
                mlflow.log_metric("validation_roc_auc", evaluation.validation_roc_auc)
            for b, m in evaluation.baselines.items():
                if m.get("roc_auc") is not None:
                    mlflow.log_metric(f"baseline_{b}_test_roc_auc", m["roc_auc"])
            import warnings

            with warnings.catch_warnings():  # the signature is explicit; an input example would load the model
                warnings.filterwarnings("ignore", message=".*An input example was not provided")
                model_info = mlflow.pyfunc.log_model(
                    name=ARTIFACT_NAME, python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                    artifacts={MODEL_DIR: str(staged)}, code_paths=[str(Path(__file__).resolve().parent.parent)],
                    signature=_signature(preprocess_path),
                    pip_requirements=[f"{k}=={v}" for k, v in libs.items()
                                      if k in ("scikit-learn", "skops", "pandas", "numpy", "mlflow")
                                      or (k == "tensorflow-cpu" and Path(model_path).suffix == ".keras")]
                    + ["pyarrow"])
            rid = run.info.run_id
    tags = {"data_fingerprint": data_fingerprint, "artifact_sha256": digest, "git_commit": commit,
            "model_sha256": model_sha,
            "config_hash": config_hash, "pipeline_run_id": run_id,
            **{f"library.{k}": v for k, v in libs.items()}}
    mv = mlflow.register_model(model_info.model_uri, cfg.model_name, tags=tags)
    version = str(mv.version)
    alias, reason = gate(cfg, home, version, preprocess_path)
    if alias == "champion":
        promote(cfg, home, cfg.model_name, version, reason=reason)
    else:
        c.set_registered_model_alias(cfg.model_name, "challenger", version)
        c.set_model_version_tag(cfg.model_name, version, "promotion_reason", reason)
    logger.info("register: %s version %s -> %s (%s)", cfg.model_name, version, alias, reason)
    return RegisteredVersion(name=cfg.model_name, version=version, alias=alias,
                             uri=f"models:/{cfg.model_name}@{alias}", run_id=rid, reason=reason)


def _same_version(c, name: str, model_sha: str, data_fingerprint: str):
    """An existing version with the same model file and data fingerprint, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = c.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for mv in versions:
        tags = mv.tags or {}
        if tags.get("model_sha256") == model_sha and tags.get("data_fingerprint") == data_fingerprint:
            return mv
    return None


def _champion_or_none(c, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def gate(cfg: RegisterConfig, home: Home, version: str, preprocess_path: str) -> tuple[str, str]:
    """Promotion decision for a just-registered version: (alias, reason).

    Both the candidate and the champion score the candidate's frozen test rows from raw
    records (each through its own feature spec and lookups), and the ROC AUC difference is
    bootstrapped with paired resamples.
    """
    import pandas as pd

    from mlops_ray.evaluate.bootstrap import resample_weights, weighted_roc_auc
    from mlops_ray.preprocess import load_feature_spec
    from mlops_ray.serve.model import ServedModel

    c = client(cfg, home)
    champ = _champion_or_none(c, cfg.model_name)
    if champ is None:
        return "champion", "first version: no champion yet"
    inputs = list(load_feature_spec(preprocess_path).inputs)
    test = pd.read_parquet(Path(preprocess_path) / "data" / "test", columns=[*inputs, "label"])
    y = test["label"].to_numpy()
    if len(np.unique(y)) < 2:
        return "challenger", "test split has a single class: ROC AUC undefined, champion kept"
    with tempfile.TemporaryDirectory() as tmp:
        probs = {}
        for tag, v in (("candidate", version), ("champion", str(champ.version))):
            mv, local = download_version(cfg, home, f"models:/{cfg.model_name}/{v}", Path(tmp) / tag)
            probs[tag] = ServedModel.from_dir(local, name=mv.name, version=str(mv.version), alias=None) \
                .predict_proba(test[inputs])
    W = resample_weights(len(y), cfg.promotion_bootstrap, seed=0)
    diff = weighted_roc_auc(y, probs["candidate"], W) - weighted_roc_auc(y, probs["champion"], W)
    lo, hi = np.nanquantile(diff, [0.025, 0.975])
    point = float(weighted_roc_auc(y, probs["candidate"], np.ones((1, len(y))))[0]
                  - weighted_roc_auc(y, probs["champion"], np.ones((1, len(y))))[0])
    detail = (f"test ROC AUC difference vs champion v{champ.version}: {point:+.4f} "
              f"(95% paired bootstrap [{lo:+.4f}, {hi:+.4f}], {cfg.promotion_bootstrap} resamples, "
              f"{len(y)} rows); margin {cfg.promotion_margin}")
    if lo > cfg.promotion_margin:
        return "champion", f"beats the champion: {detail}"
    return "challenger", f"does not beat the champion: {detail}"


def promote(cfg: RegisterConfig, home: Home, name: str, version: str, reason: str = "promoted by hand") -> str | None:
    """Make ``version`` the champion; returns the previous champion's version.

    The alias moves in one registry write (``set_registered_model_alias`` overwrites), so a
    crash at any point leaves a champion: the old one before that write, the new one after.
    The history used by :func:`rollback` is updated afterwards.

    Raises:
        RegistryError: unknown model or version.
    """
    c = client(cfg, home)
    resolve_version(cfg, home, f"models:/{name}/{version}")
    old = _champion_or_none(c, name)
    c.set_registered_model_alias(name, "champion", version)
    c.set_model_version_tag(name, version, "promotion_reason", reason)
    history = _history(c, name)
    if old is not None and (not history or history[-1] != str(old.version)):
        history.append(str(old.version))
    history.append(str(version))
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-50:]))
    aliases = c.get_registered_model(name).aliases or {}
    if str(aliases.get("challenger")) == str(version):
        c.delete_registered_model_alias(name, "challenger")
    return str(old.version) if old is not None else None


def _history(c, name: str) -> list[str]:
    tags = c.get_registered_model(name).tags or {}
    return list(json.loads(tags.get(HISTORY_TAG, "[]")))


def rollback(cfg: RegisterConfig, home: Home, name: str) -> tuple[str, str]:
    """Restore the previous champion in one alias write; returns (from_version, to_version).

    Raises:
        RegistryError: no champion, or no earlier champion to return to.
    """
    c = client(cfg, home)
    current = _champion_or_none(c, name)
    if current is None:
        raise RegistryError(f"model '{name}' has no champion to roll back from; see `mlops-ray models list`.")
    history = _history(c, name)
    earlier = [v for v in history if v != str(current.version)]
    if not earlier:
        raise RegistryError(f"model '{name}' has no earlier champion than v{current.version}; nothing to roll back to.")
    target = earlier[-1]
    c.set_registered_model_alias(name, "champion", target)
    c.set_model_version_tag(name, target, "promotion_reason", f"rollback from v{current.version}")
    last = max(i for i, v in enumerate(history) if v == target)
    c.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[: last + 1]))
    return str(current.version), target


def _require_local_registry(cfg: RegisterConfig, home: Home, uri: str) -> None:
    """Refuse at once to read from a home that has no registry yet: opening it would create an empty
    ``mlflow.db`` (MLflow's schema migrations, ~20 s here) only to find no model, and leave it behind.

    Raises:
        RegistryError: ``register.tracking_uri`` is unset and ``<home>/mlflow.db`` does not exist (names the
            home, where it came from and what to do).
    """
    if cfg.tracking_uri or (home.root / "mlflow.db").exists():
        return
    from mlops_ray.home import ENV_VAR

    origin = f"{ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else \
        f"{ENV_VAR} is unset, so ./.mlops_ray of the current folder"
    raise RegistryError(f"model URI '{uri}': no model registry at {home.root} ({origin}). Run the pipeline first "
                        f"(`mlops-ray run`), or run this command where you ran it, or set {ENV_VAR} to that home.")


def resolve_version(cfg: RegisterConfig, home: Home, uri: str):
    """The MLflow ``ModelVersion`` a URI points at.

    Raises:
        RegistryError: unknown model, version or alias (the message lists what exists), or no registry in
            ``home`` (default tracking store and no ``mlflow.db`` there yet).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    _require_local_registry(cfg, home, uri)
    c = client(cfg, home)
    try:
        return c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException:
        try:
            models = {m.name: m for m in c.search_registered_models()}
        except MlflowException:  # pragma: no cover
            models = {}
        if name in models:
            aliases = sorted((models[name].aliases or {}).keys())
            what = f"alias '{alias}'" if alias else f"version {version}"
            raise RegistryError(f"model URI '{uri}' does not resolve: '{name}' has no {what}; its aliases: "
                                f"{aliases or 'none'}. See `mlops-ray models list`.") from None
        raise RegistryError(f"model URI '{uri}' does not resolve in {tracking_uri(cfg, home)}; registered models: "
                            f"{sorted(models) or 'none'}. Run the pipeline (`mlops-ray run`) or see "
                            "`mlops-ray models list`.") from None


def check_libraries(recorded: dict[str, str], allow_mismatch: bool, what: str) -> None:
    """Refuse a version whose scikit-learn/skops major.minor differs from the installed one.

    Raises:
        RegistryError: naming each library, the recorded and the installed version, and the override.
    """
    installed = library_versions()
    bad = [f"{k} {recorded[k]} recorded, {installed.get(k, 'none')} installed" for k in CHECKED_LIBRARIES
           if k in recorded and recorded[k].split(".")[:2] != installed.get(k, "").split(".")[:2]]
    if bad and not allow_mismatch:
        raise RegistryError(f"{what} was trained with other library versions ({'; '.join(bad)}). Install the "
                            "recorded versions, or set register.allow_library_mismatch: true to load it anyway.")
    if bad:
        logger.warning("%s: library mismatch allowed by config: %s", what, "; ".join(bad))


def download_version(cfg: RegisterConfig, home: Home, uri: str, dest: str | Path) -> tuple[Any, Path]:
    """Download a version, verify its SHA-256 and library versions; returns (ModelVersion, model_dir).

    Raises:
        RegistryError: unknown URI, changed artifacts (SHA-256 mismatch) or a library mismatch.
    """
    import mlflow

    mv = resolve_version(cfg, home, uri)
    root = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}",
                                                    dst_path=str(dest), tracking_uri=tracking_uri(cfg, home)))
    found = sorted(root.rglob("version.json"))
    if not found:
        raise RegistryError(f"{mv.name} v{mv.version} at {mv.source} has no version.json; it was not registered by "
                            "mlops_ray.")
    local = found[0].parent
    what = f"{mv.name} v{mv.version}"
    expected = (mv.tags or {}).get("artifact_sha256")
    actual = sha256_dir(local)
    if expected != actual:
        raise RegistryError(f"artifacts of {what} fail verification: SHA-256 {actual}, recorded {expected}. "
                            f"The files behind {mv.source} were changed; re-register the model.")
    recorded = {k[len("library."):]: v for k, v in (mv.tags or {}).items() if k.startswith("library.")}
    check_libraries(recorded, cfg.allow_library_mismatch, what)
    return mv, local


def list_versions(cfg: RegisterConfig, home: Home) -> list[dict[str, Any]]:
    """Every version of every registered model: name, version, aliases, test ROC AUC, created, reason."""
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
