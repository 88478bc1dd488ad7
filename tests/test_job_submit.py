"""`ray job submit` of jobs/pipeline.py to a real `ray start --head` cluster on loopback.

The cluster runs in its own temp dir with explicit ports, so it neither collides with the
test session's local Ray nor is stopped by `ray stop` (which would stop every Ray here):
teardown kills exactly the processes of that temp dir.
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

from tests.conftest import REPO, free_port, sample_config_mapping

pytestmark = pytest.mark.timeout(900)

VENV_BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


@pytest.fixture(scope="module")
def head_cluster():
    """A one-node Ray cluster started with `ray start --head`; yields the dashboard (Jobs API) URL."""
    temp_dir = tempfile.mkdtemp(prefix="mlops_ray_head_")
    gcs, dash = free_port(), free_port()
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
           "--num-cpus=2", f"--object-store-memory={300 * 1024 * 1024}", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
    subprocess.run(cmd, check=True, env=_env(), capture_output=True, timeout=180)
    url = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/version", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        pytest.fail(f"Ray dashboard at {url} did not come up within 90 s")
    yield url
    subprocess.run(["pkill", "-9", "-f", temp_dir], check=False)
    time.sleep(2)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_the_pipeline_and_registers_a_version(head_cluster, tmp_path):
    home = tmp_path / "home"
    cfg = sample_config_mapping(free_port(), free_port())
    cfg["engines"]["ray"] = {}  # inside a job, Ray is the cluster the job was submitted to
    cfg_path = tmp_path / "job.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    runtime_env = {"env_vars": {"MLOPS_RAY_HOME": str(home), "RAY_AUTH_MODE": "disabled"}}
    res = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "submit", "--address", head_cluster, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/pipeline.py", "--config", str(cfg_path)],
        env=_env(), capture_output=True, text=True, timeout=800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "succeeded" in res.stdout

    listed = subprocess.run([str(VENV_BIN / "mlops-ray"), "models", "list", "--json"], env=_env(MLOPS_RAY_HOME=str(home)),
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["version"], r["aliases"]) for r in rows] == [("flights", "1", ["champion"])]
    runs = list((home / "runs").glob("*/run.json"))
    assert len(runs) == 1 and json.loads(runs[0].read_text())["status"] == "succeeded"
