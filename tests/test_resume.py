"""Kill the real runner (`mlops-ray run`, SIGKILL to its process group) mid-preprocess, then resume.

The resumed run must not recompute the finished stages (counted from the run's event log),
their fingerprints must stay the same, and the run completes to the stage it was asked for.
A second, fresh run then finds every stage in the cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST_JVM, free_port, sample_config_mapping

pytestmark = pytest.mark.timeout(600)

MLOPS_RAY = str(Path(sys.executable).parent / "mlops-ray")


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLOPS_RAY_HOME=str(home), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **FAST_JVM)
    return env


def _record(home: Path) -> dict:
    runs = sorted((home / "runs").glob("*/run.json"))
    return json.loads(runs[-1].read_text()) if runs else {}


def test_killed_mid_preprocess_then_resumed_recomputes_nothing_finished(tmp_path):
    home = tmp_path / "home"
    cfg = sample_config_mapping(free_port(), free_port(), ingest={"sample_fraction": 0.02})
    cfg["engines"]["ray"]["include_dashboard"] = False
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))

    runner = subprocess.Popen([MLOPS_RAY, "run", "--config", str(cfg_path), "--to-stage", "preprocess"], env=_env(home),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while _record(home).get("stages", {}).get("preprocess", {}).get("status") != "running":
        if runner.poll() is not None or time.monotonic() > deadline:
            out = runner.stdout.read().decode()[-3000:]
            runner.kill()
            pytest.fail(f"the runner never reached preprocess (rc={runner.returncode}):\n{out}")
        time.sleep(0.2)
    time.sleep(1.5)  # inside preprocess's Spark job
    os.killpg(runner.pid, signal.SIGKILL)  # the runner and its Spark JVM, without a chance to clean up
    runner.wait(timeout=30)
    before = _record(home)
    run_id = before["run_id"]
    assert before["stages"]["preprocess"]["status"] == "running"  # nothing could write the failure

    listed = subprocess.run([MLOPS_RAY, "runs", "list", "--json"], env=_env(home), capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert json.loads(listed.stdout)[0]["status"] == "interrupted", listed.stdout

    resumed = subprocess.run([MLOPS_RAY, "run", "--config", str(cfg_path), "--from-stage", "preprocess"],
                             env=_env(home), capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = _record(home)
    assert after["run_id"] == run_id and after["status"] == "succeeded"
    assert list(after["stages"]) == ["ingest", "validate", "preprocess"]  # --to-stage preprocess was kept
    for stage in ("ingest", "validate"):
        assert after["stages"][stage] == before["stages"][stage]  # same outputs, keys and timings: untouched
    events = [json.loads(x) for x in (home / "runs" / run_id / "events.jsonl").read_text().splitlines()]
    starts = Counter(e["stage"] for e in events if e["event"] == "start")
    assert starts == {"ingest": 1, "validate": 1, "preprocess": 2}
    pids = [e["pid"] for e in events if e["event"] == "start"]
    assert pids[:3] == [runner.pid] * 3 and pids[3] != runner.pid  # the second preprocess is the resumed process
    assert after["stages"]["preprocess"]["outputs"]["rows"]["train"] > 0

    second = subprocess.run([MLOPS_RAY, "run", "--config", str(cfg_path), "--to-stage", "preprocess"], env=_env(home),
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rerun = _record(home)
    assert rerun["run_id"] != run_id
    assert all(rerun["stages"][s]["cached"] for s in ("ingest", "validate", "preprocess")), rerun["stages"]
    for stage in ("ingest", "validate", "preprocess"):
        assert rerun["stages"][stage]["outputs"]["key"] == after["stages"][stage]["outputs"]["key"]
    assert "(cached)" in second.stdout
