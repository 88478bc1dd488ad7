"""`mlops-ray tune --resume`: an experiment killed mid-way continues without re-running finished trials.

The CLI runs in its own process with its own local Ray (in a temp dir, so the kill and the
clean-up reach exactly its processes). The run record is one whose preprocess stage is done,
pointing at synthetic preprocess outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from mlops_ray.config import config_from_mapping
from mlops_ray.home import Home
from mlops_ray.pipeline import RunRecord
from mlops_ray.tune.storage import damaged_state_files
from tests.conftest import free_port, kill_processes_under
from tests.tune.conftest import write_preprocess

pytestmark = pytest.mark.timeout(600)

VENV_BIN = Path(sys.executable).parent


TUNE_MAPPING = {"num_samples": 3, "iterations_per_report": 100, "early_stopping": "none", "track_trials": False,
                "search_space": {
                    "logistic_regression": {"C": {"distribution": "loguniform", "low": 0.01, "high": 1.0}},
                    "hist_gradient_boosting": {"max_iter": {"distribution": "fixed", "value": 400},
                                               "learning_rate": {"distribution": "fixed", "value": 0.1}}}}


def _new_run(root: Path, pre: Path):
    """(env, config path, run id, home, ray temp dir): a run whose preprocess succeeded, and a config for 6 trials."""
    home = Home.resolve(root / "home").ensure()
    mapping = {"engines": {"ray": {"num_cpus": 2, "include_dashboard": False, "metrics_export_port": free_port(),
                                   "object_store_memory_bytes": 200 * 1024 * 1024}},
               "tune": TUNE_MAPPING}
    cfg_path = root / "tune.yaml"
    cfg_path.write_text(yaml.safe_dump(mapping))
    rec = RunRecord.create(home, "run-resume", config_from_mapping(mapping))
    rec.data["stages"]["preprocess"] = {"status": "succeeded", "outputs": {"path": str(pre), "key": "pre-resume"}}
    rec.save()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    ray_tmp = tempfile.mkdtemp(prefix="mr_")  # short: Ray's socket paths must stay under 107 bytes
    env.update(MLOPS_RAY_HOME=str(home.root), RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}:{env.get('PATH', '')}")
    return env, cfg_path, "run-resume", home, Path(ray_tmp)


@pytest.fixture(scope="module")
def pre(tmp_path_factory) -> Path:
    return write_preprocess(tmp_path_factory.mktemp("pre"), n_train=40_000, width=40)


@pytest.fixture()
def tune_run(tmp_path, pre):
    run = _new_run(tmp_path, pre)
    yield run
    kill_processes_under(str(run[4]))
    shutil.rmtree(run[4], ignore_errors=True)


#: `mlops-ray tune` whose driver stops Ray's copy of the experiment state half-way: once a save made after the
#: first finished trial has been snapshotted, the next copy blocks on its search-generator file (the other files
#: of that save may be copied or not, as pyarrow's threads go) and the test kills the process there. That is the
#: kill CI hit twice by chance.
KILL_MID_COPY = """
import os, sys, threading, time
from mlops_ray.tune import progress, storage

marker = sys.argv.pop(1)
finished, saved_after = threading.Event(), threading.Event()
complete = progress.TrialProgress.on_trial_complete
snapshot = progress.take_snapshot
write = storage.AtomicLocalHandler.open_output_stream


def on_trial_complete(self, *args, **kwargs):
    complete(self, *args, **kwargs)
    finished.set()


def take_snapshot(*args, **kwargs):
    if finished.is_set():
        saved_after.set()
    return snapshot(*args, **kwargs)


def open_output_stream(self, path, metadata):
    if saved_after.is_set() and os.path.basename(path).startswith("search_gen_state-"):
        with open(marker, "w") as f:
            f.write(path)
        time.sleep(3600)  # this copy never ends: the test kills the process meanwhile
    return write(self, path, metadata)


progress.TrialProgress.on_trial_complete = on_trial_complete
progress.take_snapshot = take_snapshot
storage.AtomicLocalHandler.open_output_stream = open_output_stream
sys.argv[0] = "mlops-ray"
from mlops_ray.cli import main
main()
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory, pre):
    """(run, finished trial ids, a copy of the experiment folder): `mlops-ray tune` SIGKILLed in the middle of
    Ray's copy of its experiment state, after a trial finished."""
    from ray.tune import ExperimentAnalysis

    root = tmp_path_factory.mktemp("killed")
    run = _new_run(root, pre)
    env, cfg_path, run_id, home, tmp = run
    marker, log = root / "copy-blocked", root / "tune.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", KILL_MID_COPY, str(marker), "tune", "--config", str(cfg_path),
                                 "--run-id", run_id, "-v"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)  # the driver goes on saving (and snapshotting) while the copy hangs
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no clean-up at all, like a lost machine
        proc.wait(timeout=30)
        kill_processes_under(str(tmp))
    assert marker.exists(), log.read_text()[-4000:]
    exp = next((home.root / "cache" / "tune" / ".experiments").glob("*/experiment"))
    assert ExperimentAnalysis(str(exp)).trials  # Ray's own, partly copied state
    assert damaged_state_files(exp) == []  # every state file the kill left reads back
    snapshots = sorted((exp.parent / "state_snapshots").iterdir())
    assert snapshots and all(p.name.isdigit() for p in snapshots), snapshots
    status, counter, live = _saved_state(snapshots[-1])  # one save: the searcher agrees with the trial list
    assert counter == len(status) and live <= set(status), (status, counter, live)
    finished = {tid for tid, st in status.items() if st == "TERMINATED"}  # what the resume continues from
    assert 1 <= len(finished) < 6, status
    copy = tmp_path_factory.mktemp("copy") / exp.parent.name / "experiment"
    shutil.copytree(exp, copy)
    yield run, finished, copy
    kill_processes_under(str(tmp))
    shutil.rmtree(tmp, ignore_errors=True)


def _saved_state(folder: Path) -> tuple[dict[str, str], int, set[str]]:
    """(trial id -> status in the experiment state, trials the search generator counts, its limiter's live trials)."""
    import cloudpickle

    state = json.loads(max(folder.glob("experiment_state-*.json")).read_text())
    trials = [json.loads(t) if isinstance(t, str) else t for t, _ in state["trial_data"]]
    trial_ids = {t["trial_id"]: t["status"] for t in trials}
    with max(folder.glob("search_gen_state-*.json")).open("rb") as f:
        gen = cloudpickle.load(f)
    return trial_ids, gen["counter"], set(gen["name:ConcurrencyLimiter"]["live_trials"])


def _attempts(folder: Path) -> dict[str, list[dict]]:
    """trial id -> one entry per call of the trainable (the stage's attempt log)."""
    return {f.stem: [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            for f in folder.glob("*.jsonl")}


def test_an_interrupted_experiment_resumes_without_rerunning_finished_trials(killed):
    (env, cfg_path, run_id, home, tmp), finished, _ = killed
    mr = str(VENV_BIN / "mlops-ray")
    t_resume = time.time()
    res = subprocess.run([mr, "tune", "--resume", "--config", str(cfg_path), "--run-id", run_id], env=env,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "Failed to restore" not in res.stdout + res.stderr
    record = json.loads((home.run_dir(run_id) / "run.json").read_text())
    out = record["stages"]["tune"]["outputs"]
    assert out["resumed"] is True and out["trials"] == 6 and out["trials_failed"] == 0
    by_trial = attempts = _attempts(Path(out["path"]) / "attempts")
    for tid in finished:  # a trial finished before the kill ran exactly once
        assert len(by_trial[tid]) == 1 and by_trial[tid][0]["started"] < t_resume, (tid, by_trial[tid])
    calls_after = sum(1 for a in attempts.values() for x in a if x["started"] >= t_resume)
    assert calls_after == 6 - len(finished), (calls_after, len(finished))
    assert not (home.root / "cache" / "tune" / ".experiments").joinpath(Path(out["path"]).name).exists()


def test_a_damaged_experiment_state_is_named_and_the_search_starts_over_keeping_it(killed, tune_run):
    """A state file emptied by a kill mid-write (what Ray's own copy could leave): `--resume` refuses
    at once naming the file; a plain run warns, starts the search over and keeps the damaged folder."""
    _, _, copy = killed
    env, cfg_path, run_id, home, tmp = tune_run
    exp = home.root / "cache" / "tune" / ".experiments" / copy.parent.name / "experiment"  # same inputs: same key
    shutil.copytree(copy, exp)
    searcher_state = next(exp.glob("searcher-state-*.pkl"))
    searcher_state.write_bytes(b"")
    mr = str(VENV_BIN / "mlops-ray")
    res = subprocess.run([mr, "tune", "--resume", "--config", str(cfg_path), "--run-id", run_id], env=env,
                         capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "cannot resume the interrupted experiment" in out, out[-3000:]
    assert f"{searcher_state.name}: empty (0 bytes)" in out and "without --resume" in out
    assert "retrying" not in out

    res = subprocess.run([mr, "tune", "--config", str(cfg_path), "--run-id", run_id], env=env,
                         capture_output=True, text=True, timeout=400)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "cannot be continued" in out and searcher_state.name in out
    assert "Failed to restore" not in out
    result = json.loads((home.run_dir(run_id) / "run.json").read_text())["stages"]["tune"]["outputs"]
    assert result["resumed"] is False and result["trials"] == 6 and result["trials_failed"] == 0
    kept = Path(result["path"]) / "damaged_experiment"
    assert (kept / searcher_state.name).stat().st_size == 0
    assert sorted(p.name for p in kept.iterdir()) == sorted(p.name for p in copy.iterdir())


def test_resume_with_nothing_to_resume_fails_at_once_with_the_reason(tune_run):
    env, cfg_path, run_id, home, tmp = tune_run
    res = subprocess.run([str(VENV_BIN / "mlops-ray"), "tune", "--resume", "--config", str(cfg_path), "--run-id",
                          run_id], env=env, capture_output=True, text=True, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "nothing to resume: no interrupted experiment for this config and data" in out
    assert "retrying" not in out  # a ConfigError is not retried
