"""Runs the stages in order, records the run, resumes a failed run.

Run record: ``$MLOPS_RAY_HOME/runs/<run_id>/run.json`` (../shared/CONTRACTS.md) with each
stage's status, start/end, duration, outputs (paths, rows, metrics, fingerprints) and error.
Stage outputs are content-addressed in ``cache/``; a stage whose key is already complete is
reused (``cached: true`` in its entry) instead of recomputed.

Each stage declares what it reads (the stages whose outputs it needs) and what it writes
(the output keys it must return), in :data:`STAGE_SPECS`. A failing stage is retried with
exponential backoff (``automate.retry``) unless its error is deterministic (config, data,
environment). Every start, failed attempt and end is appended to
``runs/<run_id>/events.jsonl``; a run whose process died without writing its end
(``kill -9``, a lost node) shows as ``interrupted`` and is resumed like a failed one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import Config
from mlops_ray.errors import ConfigError, DataError, EnvironmentSetupError, StageError
from mlops_ray.home import ENV_VAR, Home

logger = logging.getLogger(__name__)

STAGES = ("ingest", "validate", "preprocess", "tune", "evaluate", "explain", "register", "deploy", "smoke")
SPARK_STAGES = frozenset({"ingest", "validate", "preprocess"})
#: Errors a retry cannot fix: the stage fails at once, whatever ``automate.retry`` says.
NOT_RETRIED: tuple[type[BaseException], ...] = (ConfigError, DataError, EnvironmentSetupError)

#: callback(stage, event, payload): event is "start", "done" or "failed".
ProgressCallback = Callable[[str, str, dict[str, Any]], None]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    """Sortable run id: UTC timestamp plus 6 random hex digits."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (PermissionError means it exists)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def effective_status(data: dict[str, Any]) -> str:
    """A run's status, with ``running`` turned into ``interrupted`` when its process on this host is gone."""
    status = data.get("status", "unknown")
    runner = data.get("runner") or {}
    if status == "running" and runner.get("host") == socket.gethostname() and runner.get("pid"):
        if not _pid_alive(int(runner["pid"])):
            return "interrupted"
    return status


class RunRecord:
    """The mutable run record, written to ``run.json`` after every change, plus its event log."""

    def __init__(self, home: Home, run_id: str, data: dict[str, Any]):
        self.home = home
        self.run_id = run_id
        self.data = data
        self.options: dict[str, dict[str, Any]] = {}  # per-stage options of this invocation (not saved)

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

    @classmethod
    def exists(cls, home: Home, run_id: str) -> bool:
        return (home.run_dir(run_id) / "run.json").is_file()

    @property
    def dir(self) -> Path:
        return self.home.run_dir(self.run_id)

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"run.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.dir / "run.json")

    def event(self, stage: str, event: str, **fields: Any) -> None:
        """Append one line to ``events.jsonl`` (stage start/retry/done/failed, with pid and attempt)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"ts": _now(), "stage": stage, "event": event, "pid": os.getpid(), **fields}, default=str)
        with open(self.dir / "events.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def events(self) -> list[dict[str, Any]]:
        path = self.dir / "events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []

    def outputs(self, stage: str) -> dict[str, Any]:
        st = self.data["stages"].get(stage)
        if not st or st.get("status") != "succeeded":
            raise ConfigError(f"run {self.run_id} has no successful '{stage}' stage; run it first "
                              f"(`mlops-ray run --from-stage {stage} --run-id {self.run_id}`).")
        return st["outputs"]


def list_runs(home: Home) -> list[dict[str, Any]]:
    """Every run record under home, newest first by creation time (run id, status, created, stages)."""
    out = []
    if home.runs_dir().is_dir():
        for p in home.runs_dir().glob("*/run.json"):
            d = json.loads(p.read_text())
            out.append({"run_id": d["run_id"], "status": effective_status(d), "created": d["created"],
                        "stages": {k: ("cached" if v.get("cached") else v.get("status")) for k, v in d["stages"].items()}})
    # newest first by creation time (run ids given by a scheduler do not sort by time)
    return sorted(out, key=lambda r: (r["created"], r["run_id"]), reverse=True)


def latest_failed_run(home: Home) -> str | None:
    """Id of the newest run that failed or was interrupted, if any."""
    return next((r["run_id"] for r in list_runs(home) if r["status"] in ("failed", "interrupted")), None)


def _asdict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)


def _resume_command(stage: str, run_id: str, config_path: str | None) -> str:
    cfg = f" --config {config_path}" if config_path else ""
    return f"mlops-ray run{cfg} --from-stage {stage} --run-id {run_id}"


def plan(from_stage: str | None = None, to_stage: str | None = None, only: tuple[str, ...] | None = None) -> list[str]:
    """The stages a run executes, in order.

    Raises:
        ConfigError: an unknown stage name, or ``to_stage`` before ``from_stage``.
    """
    for s in (from_stage, to_stage, *(only or ())):
        if s is not None and s not in STAGES:
            raise ConfigError(f"unknown stage '{s}'; expected one of {', '.join(STAGES)}.")
    if only:
        return [s for s in STAGES if s in only]
    lo = STAGES.index(from_stage) if from_stage else 0
    hi = STAGES.index(to_stage) if to_stage else len(STAGES) - 1
    if hi < lo:
        raise ConfigError(f"--to-stage {to_stage} comes before --from-stage {from_stage}; "
                          f"stages run in the order {' -> '.join(STAGES)}.")
    return list(STAGES[lo:hi + 1])


def run_pipeline(cfg: Config, *, sessions=None, run_id: str | None = None, from_stage: str | None = None,
                 to_stage: str | None = None, only: tuple[str, ...] | None = None, keep_serving: bool = False,
                 progress: ProgressCallback | None = None, config_path: str | None = None,
                 home: Home | None = None, release_spark: bool = True,
                 sleep: Callable[[float], None] = time.sleep,
                 stage_options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the pipeline (or part of it) and return the run record.

    Args:
        cfg: the validated config.
        sessions: a :class:`mlops_ray.sessions.Sessions`; None creates one here (and closes it).
        run_id: continue this run (with ``from_stage`` or ``only``), or start a new run with this id
            when no record of it exists (a scheduler's run id); None = a new run with a fresh id.
        from_stage: first stage to run; earlier stages' outputs come from the run record.
        to_stage: last stage to run (inclusive); a resumed run keeps the ``to_stage`` it started with.
        only: run just these stages (their inputs come from the run record).
        keep_serving: leave Ray (and the deployment) running at the end.
        progress: callback(stage, event, payload) for a progress display.
        config_path: shown in the resume command of a failure.
        release_spark: stop Spark (and its JVM) once the Spark stages are done, to give Ray the memory.
        sleep: how to wait between attempts (``time.sleep``).
        stage_options: per-stage options of this invocation, e.g. ``{"tune": {"resume": True}}``
            (``mlops-ray tune --resume``).

    Returns:
        The run record (the content of ``run.json``).

    Raises:
        StageError: a stage failed after its attempts; the message names the stage, the last
            error and the resume command.
        ConfigError: bad stage name or unknown run.
        DataError: pre-flight: the main table's local files hold no row (nothing was run or recorded).
    """
    from mlops_ray.batch_metrics import export_run_metrics
    from mlops_ray.ingest.preflight import check_inputs
    from mlops_ray.sessions import Sessions

    home = (home or Home.resolve()).ensure()
    os.environ[ENV_VAR] = str(home.root)
    todo = plan(from_stage, to_stage, only)  # validates the names before anything is written
    if "ingest" in todo:
        check_inputs(cfg.ingest)  # an empty input is refused before any stage runs
    if run_id and RunRecord.exists(home, run_id):
        record = RunRecord.load(home, run_id)
        if not (from_stage or only):
            raise ConfigError(f"run '{run_id}' already exists; resume it with --from-stage STAGE "
                              "or leave out --run-id for a new run.")
        if not to_stage and record.data.get("to_stage"):  # a resumed run keeps where it was asked to stop
            to_stage = record.data["to_stage"]
            todo = plan(from_stage, to_stage, only)
    else:
        if run_id and todo[0] != STAGES[0]:
            raise ConfigError(f"run '{run_id}' not found under {home.runs_dir()}: stage '{todo[0]}' needs the "
                              f"outputs of earlier stages of an existing run. List runs with `mlops-ray runs list`, "
                              f"or start a new run with --run-id at stage '{STAGES[0]}'.")
        record = RunRecord.create(home, run_id or new_run_id(), cfg)
    if cfg.deploy.smoke_records == 0 and "smoke" in todo:
        todo.remove("smoke")
    record.data.update(status="running", to_stage=to_stage,
                       runner={"pid": os.getpid(), "host": socket.gethostname(), "started": _now()})
    record.data.pop("ended", None)
    record.options = dict(stage_options or {})
    record.save()

    own = sessions is None
    sessions = sessions or Sessions(cfg.engines, ray_runtime_env={"env_vars": {ENV_VAR: str(home.root)}},
                                    extra_jars=cfg.ingest.spark_jars())
    notify = progress or (lambda *_: None)
    current = None
    try:
        for stage in todo:
            current = stage
            spec = STAGE_SPECS[stage]
            if spec.engine != "spark" and release_spark:
                sessions.stop_spark()  # free the JVM's memory before Ray work
            for need in spec.needs:
                record.outputs(need)  # a clear error naming the missing stage and how to run it
            _run_stage(spec, cfg, sessions, record, home, notify, sleep)
        # a run that ran only some stages is as good as its worst stage, not "succeeded" by this call alone
        bad = [s for s, e in record.data["stages"].items() if e.get("status") != "succeeded"]
        record.data["status"] = "failed" if bad else "succeeded"
        record.data["ended"] = _now()
        record.save()
        return record.data
    except BaseException as exc:
        record.data["status"] = "failed"
        record.data["ended"] = _now()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            record.data["status_reason"] = f"interrupted ({type(exc).__name__})"
        record.save()
        if isinstance(exc, Exception) and current is not None:
            raise StageError(current, record.run_id, exc, _resume_command(current, record.run_id, config_path)) from exc
        if isinstance(exc, KeyboardInterrupt) and current is not None:
            raise RunInterrupted(current, record.run_id, _resume_command(current, record.run_id, config_path)) from exc
        raise
    finally:
        export_run_metrics(record, cfg.automate.metrics)
        if own:
            sessions.close(keep_ray=keep_serving)


def _run_stage(spec: "StageSpec", cfg: Config, sessions, record: RunRecord, home: Home,
               notify: ProgressCallback, sleep: Callable[[float], None]) -> None:
    """Run one stage with its retry policy; update its run-record entry and the event log."""
    policy = cfg.automate.retry_for(spec.name)
    entry: dict[str, Any] = {"status": "running", "started": _now(), "attempts": []}
    record.data["stages"][spec.name] = entry
    record.save()
    notify(spec.name, "start", {})
    t0 = time.monotonic()
    for attempt in range(1, policy.max_attempts + 1):
        record.event(spec.name, "start", attempt=attempt)
        t_attempt = time.monotonic()
        try:
            outputs = spec.func(cfg, sessions, record, home)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            retry = isinstance(exc, Exception) and not isinstance(exc, NOT_RETRIED) and attempt < policy.max_attempts
            delay = policy.delay_s(attempt) if retry else None
            entry["attempts"].append({"attempt": attempt, "duration_s": round(time.monotonic() - t_attempt, 3),
                                      "error": error, "retry_in_s": delay})
            record.event(spec.name, "attempt_failed", attempt=attempt, error=error[:500], retry_in_s=delay)
            if not retry:
                entry.update(status="failed", ended=_now(), duration_s=round(time.monotonic() - t0, 3), error=error,
                             traceback=traceback.format_exc(limit=20))
                if isinstance(exc, NOT_RETRIED) and policy.max_attempts > 1:
                    entry["not_retried"] = f"{type(exc).__name__} is deterministic; a retry cannot fix it"
                record.save()
                record.event(spec.name, "failed", attempt=attempt)
                notify(spec.name, "failed", entry)
                raise
            logger.warning("stage %s attempt %d/%d failed (%s); retrying in %.1f s",
                           spec.name, attempt, policy.max_attempts, error[:300], delay)
            record.save()
            notify(spec.name, "retry", {"attempt": attempt, "error": error, "retry_in_s": delay})
            sleep(delay)
            continue
        missing = [k for k in spec.produces if k not in outputs]
        if missing:  # an internal contract between stages, reported like a stage failure
            raise StageContractError(f"stage '{spec.name}' returned no {missing}; its declared outputs are "
                                     f"{list(spec.produces)}.")
        entry["attempts"].append({"attempt": attempt, "duration_s": round(time.monotonic() - t_attempt, 3)})
        entry.update(status="succeeded", ended=_now(), duration_s=round(time.monotonic() - t0, 3),
                     cached=bool(outputs.get("cache_hit", False)), rows=spec.rows(outputs),
                     metrics=spec.metrics(outputs), outputs=outputs)
        record.save()
        record.event(spec.name, "done", attempt=attempt, cached=entry["cached"])
        notify(spec.name, "done", entry)
        return


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run; carries the command that resumes it."""

    def __init__(self, stage: str, run_id: str, resume_command: str):
        super().__init__(f"run {run_id} was interrupted in stage '{stage}'; resume it with:\n  {resume_command}")
        self.stage, self.run_id, self.resume_command = stage, run_id, resume_command


class StageContractError(RuntimeError):
    """A stage returned outputs that do not match its declaration (a bug, not user input)."""


# ------------------------------------------------------------------------ stages
def _ingest(cfg, sessions, record, home):
    from mlops_ray.ingest import run_ingest

    return _asdict(run_ingest(cfg.ingest, lambda: sessions.spark, home))


def _validate(cfg, sessions, record, home):
    from mlops_ray.validate import run_validate

    ing = record.outputs("ingest")
    return _asdict(run_validate(cfg.validate_, lambda: sessions.spark, ing["path"], ing["key"], home,
                                table=cfg.ingest.main_table))


def _preprocess(cfg, sessions, record, home):
    from mlops_ray.preprocess import run_preprocess

    ing, val = record.outputs("ingest"), record.outputs("validate")
    return _asdict(run_preprocess(cfg.preprocess, lambda: sessions.spark, ing["path"], val["path"], val["key"], home,
                                  table=cfg.ingest.main_table))


def _tune(cfg, sessions, record, home):
    from mlops_ray.tune import run_tune

    pre = record.outputs("preprocess")

    def tracking():
        from mlops_ray import registry

        c = registry.client(cfg.register_, home)
        return c, registry.experiment_id(c, cfg.register_, home)

    opts = record.options.get("tune", {})
    return _asdict(run_tune(cfg.tune, sessions.ray, pre["path"], pre["key"], home, resume=bool(opts.get("resume")),
                            tracking=tracking))


def _evaluate(cfg, sessions, record, home):
    from mlops_ray.evaluate import run_evaluate
    from mlops_ray.tune import load_model

    pre, tun = record.outputs("preprocess"), record.outputs("tune")
    key = cache_key("evaluate", pre["key"], tun["key"], cfg.evaluate.fingerprint(), cfg.tune.seed,
                    code_version("evaluate"))
    family_models = {f: fb["model_path"] for f, fb in (tun.get("family_best") or {}).items()}
    entry = cached(home, "evaluate", key, lambda out: run_evaluate(cfg.evaluate, load_model(tun["model_path"]),
                                                                    pre["path"], out, cfg.tune.seed,
                                                                    family_models=family_models))
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
    return _asdict(run_deploy(cfg.deploy, cfg.register_, sessions.ray(), home, uri,
                              monitor_cfg=cfg.monitor if cfg.monitor.online else None))


def _smoke(cfg, sessions, record, home):
    from mlops_ray.serve import run_smoke, smoke_records

    pre, dep = record.outputs("preprocess"), record.outputs("deploy")
    records = smoke_records(pre["path"], cfg.deploy.smoke_records, seed=cfg.tune.seed)
    answer = run_smoke(dep["url"], records)
    return {"url": dep["url"], "records": records, "answer": answer}


def _no_figures(out: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """What a stage reads and writes.

    Attributes:
        name: the stage (a CLI verb and a package).
        func: ``func(cfg, sessions, record, home) -> outputs`` (a JSON-able dict).
        needs: stages whose outputs it reads from the run record.
        produces: keys its outputs must contain.
        engine: ``spark``, ``ray`` or None (neither).
        rows: outputs -> {outcome: rows} for the run record and ``mlops_rows_total``.
        metrics: outputs -> {metric: value} for the run record and ``mlops_best_metric``.
    """

    name: str
    func: Callable[..., dict[str, Any]]
    needs: tuple[str, ...]
    produces: tuple[str, ...]
    engine: str | None = None
    rows: Callable[[dict[str, Any]], dict[str, int]] = _no_figures
    metrics: Callable[[dict[str, Any]], dict[str, float]] = _no_figures


def _validate_rows(out: dict[str, Any]) -> dict[str, int]:
    return {"in": out["rows_in"], "valid": out["rows_valid"], "quarantined": sum(out["quarantined"].values())}


STAGE_SPECS: dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("ingest", _ingest, (), ("path", "key", "rows"), "spark",
              rows=lambda o: {"read": o["rows"]["flights"]} if "flights" in o["rows"] else {}),
    StageSpec("validate", _validate, ("ingest",), ("path", "key", "rows_in", "rows_valid", "quarantined"), "spark",
              rows=_validate_rows),
    StageSpec("preprocess", _preprocess, ("ingest", "validate"), ("path", "key", "rows", "width", "fingerprint"), "spark",
              rows=lambda o: dict(o["rows"])),
    StageSpec("tune", _tune, ("preprocess",), ("path", "key", "family", "best_score", "model_path"), "ray",
              metrics=lambda o: {f"validation_{o['metric']}": o["best_score"]}),
    StageSpec("evaluate", _evaluate, ("preprocess", "tune"), ("path", "model", "threshold"),
              metrics=lambda o: {f"test_{k}": v for k, v in o["model"].items()
                                 if k in ("roc_auc", "f1", "accuracy") and v is not None}),
    StageSpec("explain", _explain, ("preprocess", "tune"), ("path", "top_features")),
    StageSpec("register", _register, ("preprocess", "tune", "evaluate", "explain"), ("name", "version", "uri")),
    StageSpec("deploy", _deploy, ("register",), ("url", "model_uri"), "ray"),
    StageSpec("smoke", _smoke, ("preprocess", "deploy"), ("url", "answer")),
)}
if tuple(STAGE_SPECS) != STAGES:  # pragma: no cover - internal invariant, not user input
    raise RuntimeError("STAGE_SPECS must list every stage in STAGES order")
