"""Retrain trigger against a real local Ray head: Alertmanager webhook and `mlops-ray retrain`, with the cooldown.

The head is started with `ray start --head` on loopback (explicit ports, its own temp dir); the
webhook runs as `mlops-ray retrain-webhook` in its own process, as a user would run it. The
submitted pipeline jobs are stopped as soon as their submission is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import free_port, kill_processes_under

pytestmark = pytest.mark.timeout(400)
VENV_BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               **extra)
    return env


@pytest.fixture(scope="module")
def ray_head():
    """A one-node Ray cluster; yields its Jobs/dashboard URL."""
    temp_dir = tempfile.mkdtemp(prefix="mr_rt_")
    dash = free_port()
    try:
        res = subprocess.run([str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                              f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                              "--include-dashboard=true", f"--ray-client-server-port={free_port()}",
                              f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                              f"--object-store-memory={100 * 1024 * 1024}", f"--temp-dir={temp_dir}",
                              "--disable-usage-stats"], env=_env(), capture_output=True, text=True, timeout=180,
                             cwd=temp_dir)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/api/version", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield url
    finally:
        kill_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _jobs(url: str) -> list[dict]:
    return [j for j in requests.get(f"{url}/api/jobs/", timeout=10).json()
            if (j.get("submission_id") or "").startswith("mlops-ray-pipeline-")]


def _stop_all(url: str) -> None:
    for j in _jobs(url):
        requests.post(f"{url}/api/jobs/{j['submission_id']}/stop", timeout=10)


def _payload(status: str, *names: str) -> dict:
    return {"version": "4", "status": status, "receiver": "mlops_ray", "groupLabels": {}, "commonLabels": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": [{"status": status, "labels": {"alertname": n, "pipeline": "flights", "feature": "temp"},
                        "annotations": {"summary": "drift"}, "startsAt": "2026-11-30T00:00:00Z"} for n in names]}


def test_alerts_submit_one_pipeline_job_per_cooldown_and_the_cli_respects_it(ray_head, tmp_path):
    url = ray_head
    home = tmp_path / "home"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"monitor": {"retrain_cooldown_s": 600}}))
    port = free_port()
    env = _env(MLOPS_RAY_HOME=str(home))
    hook = subprocess.Popen([str(VENV_BIN / "mlops-ray"), "retrain-webhook", "--config", str(cfg), "--address", url,
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.5)
        # resolved alerts, and firing alerts that are not drift/accuracy, submit nothing
        r = requests.post(f"{base}/alerts", json=_payload("resolved", "MlopsFeatureDrift"), timeout=30)
        assert r.status_code == 200 and r.json()["submitted"] is False
        r = requests.post(f"{base}/alerts", json=_payload("firing", "MlopsHighLatencyP99"), timeout=30)
        assert r.status_code == 200 and "no firing alert among" in r.json()["reason"]
        assert _jobs(url) == []
        # a body that is not Alertmanager's is a 4xx naming the field
        r = requests.post(f"{base}/alerts", json={"status": "firing"}, timeout=30)
        assert r.status_code == 422 and "alerts" in r.text
        # drift fires: one pipeline job
        r = requests.post(f"{base}/alerts", json=_payload("firing", "MlopsFeatureDrift"), timeout=60)
        assert r.status_code == 202, r.text
        first = r.json()
        assert first["submitted"] and first["alerts"] == ["MlopsFeatureDrift"]
        jobs = _jobs(url)
        assert [j["submission_id"] for j in jobs] == [first["submission_id"]]
        assert "jobs/pipeline.py" in jobs[0]["entrypoint"] and jobs[0]["metadata"]["mlops_ray_target"] == "pipeline"
        # repeated alerts inside the cooldown start nothing
        r = requests.post(f"{base}/alerts", json=_payload("firing", "MlopsAccuracyDrop", "MlopsFeatureDrift"),
                          timeout=60)
        assert r.status_code == 200 and r.json()["reason"].startswith("cooldown") and 0 < r.json()["retry_after_s"] <= 600
        assert len(_jobs(url)) == 1
    finally:
        hook.terminate()
        hook.wait(timeout=30)
        _stop_all(url)
    # the CLI shares the cooldown (same home); --force submits anyway
    mr = [str(VENV_BIN / "mlops-ray"), "retrain", "--config", str(cfg), "--address", url, "--json"]
    res = subprocess.run(mr, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and json.loads(res.stdout)["submitted"] is False, res.stdout + res.stderr
    res = subprocess.run(mr + ["--force"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    forced = json.loads(res.stdout)
    assert forced["submitted"] and forced["submission_id"] != first["submission_id"]
    assert len(_jobs(url)) == 2
    _stop_all(url)
    state = json.loads((home / "monitor" / "retrain.json").read_text())
    assert state["submission_id"] == forced["submission_id"]
