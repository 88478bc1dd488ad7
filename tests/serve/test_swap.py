"""Promote and rollback switch what a running deployment serves (Serve rolls the replicas)."""

from __future__ import annotations

import time

import pytest
import requests
from typer.testing import CliRunner

from mlops_ray.cli import app
from tests.registry.conftest import register_worse

pytestmark = pytest.mark.timeout(600)

GOOD = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
        "dest": "SFO", "distance": 2565}


def _served(endpoint) -> str:
    return requests.get(f"{endpoint}/v1/model", timeout=10).json()["version"]


def test_promote_and_rollback_switch_the_running_deployment(pipeline_run, endpoint, tmp_path, monkeypatch):
    cfg, home, record = pipeline_run
    v2 = register_worse(cfg, home, record, tmp_path)
    assert v2.alias == "challenger" and _served(endpoint) == "1"  # the gate kept v1; nothing switched
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home.root))
    cfg_file = tmp_path / "cfg.yaml"
    from mlops_ray.config import config_to_yaml

    cfg_file.write_text(config_to_yaml(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["models", "promote", "flights", v2.version, "--config", str(cfg_file)])
    assert res.exit_code == 0, res.output
    assert f"now serves v{v2.version}" in res.output
    assert _served(endpoint) == v2.version
    # answers keep coming, from the new version
    r = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == {"name": "flights", "version": v2.version, "alias": "champion"}
    # a config naming another HTTP port (or none: the bundled one's 8000) still finds the running Serve's port
    from tests.conftest import free_port

    other = tmp_path / "other_port.yaml"
    other.write_text(config_to_yaml(cfg.model_copy(update={"deploy": cfg.deploy.model_copy(
        update={"port": free_port(), "ready_timeout_s": 30})})))
    res = runner.invoke(app, ["models", "rollback", "flights", "--config", str(other)])
    assert res.exit_code == 0, res.output
    assert "now serves v1" in res.output
    deadline = time.monotonic() + 60
    while _served(endpoint) != "1" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _served(endpoint) == "1"
