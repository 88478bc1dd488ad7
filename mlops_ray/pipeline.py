"""Runs the stages in order, records the run, resumes a failed run.

Run record: ``$MLOPS_RAY_HOME/runs/<run_id>/run.json`` (../shared/CONTRACTS.md) with each
stage's status, start/end, duration, outputs (paths, rows, metrics, fingerprints) and error.
Stage outputs are content-addressed in ``cache/``; a stage whose key is already complete is
reused (``cache_hit``) instead of recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import Config
from mlops_ray.errors import ConfigError, StageError
from mlops_ray.home import ENV_VAR, Home

logger = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "preprocess", "tune", "evaluate", "explain", "register", "deploy", "smoke")
SPARK_STAGES = frozenset({"ingest", "validate", "preprocess"})

#: callback(stage, event, payload): event is "start", "done" or "failed".
ProgressCallback = Callable[[str, str, dict[str, Any]], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable run id: UTC timestamp plus 6 random hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunRecord:
    """The mutable run record, written to ``run.json`` after every change."""

    def __init__(self, home: Home, run_id: str, data: dict[str, Any]):
        self.home = home
        self.run_id = run_id
        self.data = data

    @classmethod
    def create(cls, home: Home, run_id: str, cfg: Config) -> "RunRecord":
        rec = cls(home, run_id, {"run_id": run_id, "pipeline": cfg.name, "status": "running", "created": _now(),
                                 "config_hash": cfg.fingerprint(), "home": str(home.root),
                                 "config": cfg.model_dump(mode="json", by_alias=True), "stages": {}})
        rec.save()
        return rec

    @classmethod
    def load(cls, home: Home, run_id: str) -> "RunRecord":
        path = home.run_dir(run_id) / "run.json"
        if not path.is_file():
            raise ConfigError(f"run '{run_id}' not found under {home.runs_dir()}; list runs with `mlops-ray runs list`.")
        return cls(home, run_id, json.loads(path.read_text()))

    @property
    def dir(self) -> Path:
        return self.home.run_dir(self.run_id)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.dir / "run.json")

    def outputs(self, stage: str) -> dict[str, Any]:
        st = self.data["stages"].get(stage)
        if not st or st.get("status") != "succeeded":
            raise ConfigError(f"run {self.run_id} has no successful '{stage}' stage; run it first "
                              f"(`mlops-ray run --from-stage {stage} --run-id {self.run_id}`).")
        return st["outputs"]


def list_runs(home: Home) -> list[dict[str, Any]]:
    """Every run record under home, newest first (run id, status, created, stages)."""
    out = []
    if home.runs_dir().is_dir():
        for p in sorted(home.runs_dir().glob("*/run.json"), reverse=True):
            d = json.loads(p.read_text())
            out.append({"run_id": d["run_id"], "status": d["status"], "created": d["created"],
                        "stages": {k: v.get("status") for k, v in d["stages"].items()}})
    return out


def latest_failed_run(home: Home) -> str | None:
    """Id of the newest run whose status is ``failed``, if any."""
    return next((r["run_id"] for r in list_runs(home) if r["status"] == "failed"), None)


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def _resume_command(stage: str, run_id: str, config_path: str | None) -> str:
    cfg = f" --config {config_path}" if config_path else ""
    return f"mlops-ray run{cfg} --from-stage {stage} --run-id {run_id}"


def run_pipeline(cfg: Config, *, sessions=None, run_id: str | None = None, from_stage: str | None = None,
                 only: tuple[str, ...] | None = None, keep_serving: bool = False,
                 progress: ProgressCallback | None = None, config_path: str | None = None,
                 home: Home | None = None, release_spark: bool = True) -> dict[str, Any]:
    """Run the pipeline (or part of it) and return the run record.

    Args:
        cfg: the validated config.
        sessions: a :class:`mlops_ray.sessions.Sessions`; None creates one here (and closes it).
        run_id: continue this run (with ``from_stage`` or ``only``); None = a new run.
        from_stage: first stage to run; earlier stages' outputs come from the run record.
        only: run just these stages (their inputs come from the run record).
        keep_serving: leave Ray (and the deployment) running at the end.
        progress: callback(stage, event, payload) for a progress display.
        config_path: shown in the resume command of a failure.
        release_spark: stop Spark (and its JVM) once the Spark stages are done, to give Ray the memory.

    Returns:
        The run record (the content of ``run.json``).

    Raises:
        StageError: a stage failed; its message names the stage and the resume command.
        ConfigError: bad stage name or unknown run.
    """
    from mlops_ray.sessions import Sessions

    home = (home or Home.resolve()).ensure()
    os.environ[ENV_VAR] = str(home.root)
    for s in (from_stage, *(only or ())):
        if s is not None and s not in STAGES:
            raise ConfigError(f"unknown stage '{s}'; expected one of {', '.join(STAGES)}.")
    if run_id and (from_stage or only):
        record = RunRecord.load(home, run_id)
        record.data["status"] = "running"
    else:
        record = RunRecord.create(home, run_id or new_run_id(), cfg)
    todo = list(only) if only else list(STAGES[STAGES.index(from_stage):] if from_stage else STAGES)
    if cfg.deploy.smoke_records == 0 and "smoke" in todo:
        todo.remove("smoke")

    own = sessions is None
    sessions = sessions or Sessions(cfg.engines, ray_runtime_env={"env_vars": {ENV_VAR: str(home.root)}})
    notify = progress or (lambda *_: None)
    current = None
    try:
        for stage in todo:
            current = stage
            if stage not in SPARK_STAGES and release_spark:
                sessions.stop_spark()  # free the JVM's memory before Ray work
            entry = {"status": "running", "started": _now()}
            record.data["stages"][stage] = entry
            record.save()
            notify(stage, "start", {})
            t0 = time.monotonic()
            outputs = _STAGE_FUNCS[stage](cfg, sessions, record, home)
            entry.update(status="succeeded", ended=_now(), duration_s=round(time.monotonic() - t0, 3), outputs=outputs)
            record.save()
            notify(stage, "done", entry)
        record.data["status"] = "succeeded"
        record.data["ended"] = _now()
        record.save()
        return record.data
    except BaseException as exc:
        if current is not None:
            entry = record.data["stages"].setdefault(current, {})
            entry.update(status="failed", ended=_now(), error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc(limit=20))
        record.data["status"] = "failed"
        record.data["ended"] = _now()
        record.save()
        if current is not None:
            notify(current, "failed", record.data["stages"][current])
        if isinstance(exc, Exception) and current is not None:
            raise StageError(current, record.run_id, exc, _resume_command(current, record.run_id, config_path)) from exc
        raise
    finally:
        if own:
            sessions.close(keep_ray=keep_serving)


# ------------------------------------------------------------------------ stages
def _ingest(cfg, sessions, record, home):
    from mlops_ray.ingest import run_ingest

    return _asdict(run_ingest(cfg.ingest, lambda: sessions.spark, home))


def _validate(cfg, sessions, record, home):
    from mlops_ray.validate import run_validate

    ing = record.outputs("ingest")
    return _asdict(run_validate(cfg.validate_, lambda: sessions.spark, ing["path"], ing["key"], home))


def _preprocess(cfg, sessions, record, home):
    from mlops_ray.preprocess import run_preprocess

    ing, val = record.outputs("ingest"), record.outputs("validate")
    return _asdict(run_preprocess(cfg.preprocess, lambda: sessions.spark, ing["path"], val["path"], val["key"], home))


def _tune(cfg, sessions, record, home):
    from mlops_ray.tune import run_tune

    pre = record.outputs("preprocess")
    return _asdict(run_tune(cfg.tune, sessions.ray, pre["path"], pre["key"], home))


def _evaluate(cfg, sessions, record, home):
    from mlops_ray.evaluate import run_evaluate
    from mlops_ray.tune import load_model

    pre, tun = record.outputs("preprocess"), record.outputs("tune")
    key = cache_key("evaluate", pre["key"], tun["key"], cfg.evaluate.fingerprint(), cfg.tune.seed,
                    code_version("evaluate"))
    entry = cached(home, "evaluate", key, lambda out: run_evaluate(cfg.evaluate, load_model(tun["model_path"]),
                                                                    pre["path"], out, cfg.tune.seed))
    path = entry.path / "evaluation.json"
    return {**json.loads(path.read_text()), "path": str(path), "cache_hit": entry.hit}


def _explain(cfg, sessions, record, home):
    from mlops_ray.explain import run_explain
    from mlops_ray.tune import load_model

    pre, tun = record.outputs("preprocess"), record.outputs("tune")
    key = cache_key("explain", pre["key"], tun["key"], cfg.explain.fingerprint(), code_version("explain"))
    entry = cached(home, "explain", key, lambda out: run_explain(cfg.explain, load_model(tun["model_path"]),
                                                                  pre["path"], out))
    path = entry.path / "explain.json"
    data = json.loads(path.read_text())
    return {"path": str(path), "top_features": [r["feature"] for r in data["permutation_importance"][: cfg.explain.top_k]],
            "n_rows": data["n_rows"], "cache_hit": entry.hit}


def _register(cfg, sessions, record, home):
    from mlops_ray.evaluate import EvaluateResult
    from mlops_ray.registry import run_register
    from mlops_ray.report import write_report
    from mlops_ray.tune import TuneResult

    pre, tun, ev = record.outputs("preprocess"), record.outputs("tune"), record.outputs("evaluate")
    explain = record.outputs("explain")
    reg = _asdict(run_register(cfg.register_, home, model_path=tun["model_path"], preprocess_path=pre["path"],
                               evaluation=EvaluateResult(**ev), tune_result=TuneResult(**tun),
                               data_fingerprint=pre["fingerprint"], run_id=record.run_id,
                               config_hash=record.data["config_hash"], explain_path=explain["path"]))
    record.data["stages"]["register"]["outputs"] = reg
    reg["report"] = str(write_report(record.data, record.dir / "report.html"))
    return reg


def _deploy(cfg, sessions, record, home):
    from mlops_ray.serve import run_deploy

    reg = record.outputs("register")
    uri = f"models:/{reg['name']}@{cfg.deploy.model_alias}"
    return _asdict(run_deploy(cfg.deploy, cfg.register_, sessions.ray(), home, uri))


def _smoke(cfg, sessions, record, home):
    from mlops_ray.serve import run_smoke, smoke_records

    pre, dep = record.outputs("preprocess"), record.outputs("deploy")
    records = smoke_records(pre["path"], cfg.deploy.smoke_records, seed=cfg.tune.seed)
    answer = run_smoke(dep["url"], records)
    return {"url": dep["url"], "records": records, "answer": answer}


_STAGE_FUNCS: dict[str, Callable[..., dict[str, Any]]] = {
    "ingest": _ingest, "validate": _validate, "preprocess": _preprocess, "tune": _tune,
    "evaluate": _evaluate, "explain": _explain, "register": _register, "deploy": _deploy, "smoke": _smoke,
}
assert set(_STAGE_FUNCS) == set(STAGES)  # noqa: S101 - internal invariant, not user input
