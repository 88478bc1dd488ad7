"""The pipeline runner: stage declarations, retries with backoff, run records, resume bookkeeping.

These tests swap a stage's function for a small one (the runner is the unit under test, not
the stages); everything else — the run record, the event log, the batch metrics files — is real.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from mlops_ray.config import config_from_mapping
from mlops_ray.errors import ConfigError, DataError, StageError
from mlops_ray.home import Home
from mlops_ray import pipeline
from mlops_ray.pipeline import STAGE_SPECS, STAGES, RunRecord, effective_status, list_runs, plan, run_pipeline


class _NoSessions:
    """Stands in for Sessions where the swapped-in stages start no engine."""

    def stop_spark(self):
        pass

    def close(self, keep_ray=False):
        pass


def _cfg(**automate):
    return config_from_mapping({"automate": automate} if automate else {})


@pytest.fixture()
def home(tmp_path):
    return Home.resolve(tmp_path / "home").ensure()


def _swap(monkeypatch, stage, func):
    monkeypatch.setitem(STAGE_SPECS, stage, dataclasses.replace(STAGE_SPECS[stage], func=func))


def _ingest_ok(cfg, sessions, record, home):
    return {"path": "/nowhere", "key": "k1", "rows": {"flights": 10}, "cache_hit": False}


def test_every_stage_declares_what_it_reads_and_writes():
    assert tuple(STAGE_SPECS) == STAGES
    for i, (name, spec) in enumerate(STAGE_SPECS.items()):
        assert spec.produces, name
        assert all(STAGES.index(n) < i for n in spec.needs), f"{name} needs a later stage"
    assert STAGE_SPECS["evaluate"].needs == ("preprocess", "tune")


@pytest.mark.parametrize("args, expected", [
    ({}, list(STAGES)),
    ({"from_stage": "tune", "to_stage": "register"}, ["tune", "evaluate", "explain", "register"]),
    ({"to_stage": "preprocess"}, ["ingest", "validate", "preprocess"]),
    ({"only": ("register", "tune")}, ["tune", "register"]),
])
def test_plan(args, expected):
    assert plan(**args) == expected


@pytest.mark.parametrize("args, match", [
    ({"from_stage": "train"}, "unknown stage 'train'; expected one of ingest"),
    ({"from_stage": "register", "to_stage": "tune"}, "--to-stage tune comes before --from-stage register"),
])
def test_plan_rejects_bad_stage_names(args, match):
    with pytest.raises(ConfigError, match=match):
        plan(**args)


def test_a_transient_failure_is_retried_with_exponential_backoff(monkeypatch, home):
    calls, slept = [], []

    def flaky(cfg, sessions, record, home):
        calls.append(1)
        if len(calls) < 3:
            raise OSError(f"shared storage hiccup #{len(calls)}")
        return _ingest_ok(cfg, sessions, record, home)

    _swap(monkeypatch, "ingest", flaky)
    cfg = _cfg(retry={"max_attempts": 4, "initial_backoff_s": 1.5, "backoff_multiplier": 3, "max_backoff_s": 4})
    rec = run_pipeline(cfg, sessions=_NoSessions(), home=home, only=("ingest",), sleep=slept.append)
    assert rec["status"] == "succeeded" and len(calls) == 3
    assert slept == [1.5, 4.0]  # 1.5, then 1.5*3 = 4.5 capped at max_backoff_s
    entry = rec["stages"]["ingest"]
    assert [a.get("error") for a in entry["attempts"]] == ["OSError: shared storage hiccup #1",
                                                            "OSError: shared storage hiccup #2", None]
    assert entry["rows"] == {"read": 10} and entry["cached"] is False
    events = [(e["event"], e["attempt"]) for e in RunRecord.load(home, rec["run_id"]).events()]
    assert events == [("start", 1), ("attempt_failed", 1), ("start", 2), ("attempt_failed", 2), ("start", 3),
                      ("done", 3)]


def test_a_stage_that_keeps_failing_stops_after_its_attempts_with_the_last_error_and_resume_command(monkeypatch, home):
    calls = []

    def broken(cfg, sessions, record, home):
        calls.append(1)
        raise RuntimeError(f"worker lost (attempt {len(calls)})")

    _swap(monkeypatch, "ingest", broken)
    cfg = _cfg(retry={"max_attempts": 3, "initial_backoff_s": 0.0})
    with pytest.raises(StageError) as err:
        run_pipeline(cfg, sessions=_NoSessions(), home=home, sleep=lambda s: None, config_path="my.yaml")
    assert len(calls) == 3
    msg = str(err.value)
    assert "Stage 'ingest'" in msg and "worker lost (attempt 3)" in msg
    assert f"mlops-ray run --config my.yaml --from-stage ingest --run-id {err.value.run_id}" in msg
    data = RunRecord.load(home, err.value.run_id).data
    assert data["status"] == "failed" and len(data["stages"]["ingest"]["attempts"]) == 3


@pytest.mark.parametrize("exc", [DataError("flights.csv is missing"), ConfigError("bad key")])
def test_deterministic_errors_are_not_retried(monkeypatch, home, exc):
    calls = []

    def fails(cfg, sessions, record, home):
        calls.append(1)
        raise exc

    _swap(monkeypatch, "ingest", fails)
    with pytest.raises(StageError):
        run_pipeline(_cfg(retry={"max_attempts": 5}), sessions=_NoSessions(), home=home, sleep=lambda s: None)
    assert len(calls) == 1
    rec = list_runs(home)[0]
    entry = RunRecord.load(home, rec["run_id"]).data["stages"]["ingest"]
    assert "deterministic" in entry["not_retried"]


def test_per_stage_retry_overrides_the_default(monkeypatch, home):
    calls = []

    def fails(cfg, sessions, record, home):
        calls.append(1)
        raise OSError("down")

    _swap(monkeypatch, "ingest", fails)
    cfg = _cfg(retry={"max_attempts": 5, "initial_backoff_s": 0}, stage_retry={"ingest": {"max_attempts": 2,
                                                                                       "initial_backoff_s": 0}})
    with pytest.raises(StageError):
        run_pipeline(cfg, sessions=_NoSessions(), home=home, sleep=lambda s: None)
    assert len(calls) == 2


def test_a_stage_needing_an_earlier_stage_says_which_and_how(home):
    RunRecord.create(home, "r1", _cfg())
    with pytest.raises(StageError, match=r"no successful 'preprocess' stage; run it first .*--from-stage preprocess"):
        run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="r1", only=("tune",))


def test_a_scheduler_run_id_creates_the_record_and_later_stages_continue_it(monkeypatch, home):
    _swap(monkeypatch, "ingest", _ingest_ok)
    _swap(monkeypatch, "validate", lambda cfg, s, record, h: {
        "path": record.outputs("ingest")["path"] + "/v", "key": "k2", "rows_in": 10, "rows_valid": 9,
        "quarantined": {"no_outcome": 1}, "cache_hit": True})
    run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="airflow-20261129T000000", only=("ingest",))
    rec = run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="airflow-20261129T000000", only=("validate",))
    assert rec["stages"]["validate"]["outputs"]["path"] == "/nowhere/v"
    assert rec["stages"]["validate"]["cached"] is True
    assert rec["stages"]["validate"]["rows"] == {"in": 10, "valid": 9, "quarantined": 1}
    with pytest.raises(ConfigError, match="already exists; resume it with --from-stage"):
        run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="airflow-20261129T000000")


def test_a_run_whose_process_died_shows_as_interrupted_and_is_the_one_resumed(home):
    RunRecord.create(home, "20260101-000000-aaaaaa", _cfg())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rec = RunRecord.load(home, "20260101-000000-aaaaaa")
    import socket

    rec.data["runner"] = {"pid": dead.pid, "host": socket.gethostname()}
    rec.save()
    assert effective_status(rec.data) == "interrupted"
    assert pipeline.latest_failed_run(home) == "20260101-000000-aaaaaa"
    rec.data["runner"]["pid"] = os.getpid()  # a live runner: still running
    rec.save()
    assert effective_status(rec.data) == "running" and pipeline.latest_failed_run(home) is None


def test_runs_are_listed_newest_first_by_creation_time_not_by_id(home):
    a = RunRecord.create(home, "zzz-scheduler-id", _cfg())
    a.data["created"] = "2026-01-01T00:00:00+00:00"
    a.save()
    RunRecord.create(home, "20260102-000000-bbbbbb", _cfg())
    assert [r["run_id"] for r in list_runs(home)] == ["20260102-000000-bbbbbb", "zzz-scheduler-id"]


def test_one_stage_succeeding_does_not_make_a_failed_run_succeeded(monkeypatch, home):
    rec = RunRecord.create(home, "r2", _cfg())
    rec.data["stages"]["deploy"] = {"status": "failed", "error": "port busy"}
    rec.save()
    _swap(monkeypatch, "ingest", _ingest_ok)
    out = run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="r2", only=("ingest",))
    assert out["stages"]["ingest"]["status"] == "succeeded" and out["status"] == "failed"


def test_a_later_stage_with_an_unknown_run_id_is_refused_before_anything_is_written(home):
    with pytest.raises(ConfigError, match=r"run 'nosuch' not found .* stage 'tune' needs the outputs"):
        run_pipeline(_cfg(), sessions=_NoSessions(), home=home, run_id="nosuch", only=("tune",))
    assert list_runs(home) == []


def test_ctrl_c_in_a_stage_gives_the_exact_resume_command(monkeypatch, home):
    def interrupted(cfg, sessions, record, home):
        raise KeyboardInterrupt

    _swap(monkeypatch, "ingest", interrupted)
    with pytest.raises(pipeline.RunInterrupted, match=r"interrupted in stage 'ingest'; resume it with:\n  mlops-ray run "
                                                      r"--config c.yaml --from-stage ingest --run-id "):
        run_pipeline(_cfg(retry={"max_attempts": 3}), sessions=_NoSessions(), home=home, config_path="c.yaml")
    assert list_runs(home)[0]["status"] == "failed"
