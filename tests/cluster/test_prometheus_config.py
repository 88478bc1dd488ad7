"""cluster/prometheus/prometheus.yml passes `promtool check config` and scrapes what Ray and the batch jobs expose."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

CONFIG = REPO / "cluster" / "prometheus" / "prometheus.yml"
RULES = REPO / "cluster" / "prometheus" / "mlops_ray_alerts.yml"
PROMTOOL = shutil.which("promtool")


def promtool_check(path) -> subprocess.CompletedProcess:
    """`promtool check config PATH`; never skipped: a missing promtool fails the test with the fix."""
    if PROMTOOL is None:
        pytest.fail("promtool not found: install Debian's prometheus package (scripts/test.sh does: apt-get install "
                    "prometheus)")
    return subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_config():
    out = promtool_check(CONFIG)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@pytest.mark.parametrize("old, new, message", [
    ("\n    honor_labels: true\n", "\n    honour_labels: true\n", "field honour_labels not found"),
    ("\n  scrape_interval: 10s\n", "\n  scrape_interval: ten seconds\n", "not a valid duration"),
    ("\n          - /tmp/ray/prom_metrics_service_discovery.json\n", "\n          - /tmp/ray/[prom.json\n",
     "syntax error in pattern"),
], ids=["misspelt key", "bad duration", "bad sd file pattern"])
def test_promtool_rejects_a_planted_fault(tmp_path, old, new, message):
    text = CONFIG.read_text()
    assert text.count(old) == 1
    shutil.copy(RULES, tmp_path / RULES.name)  # rule_files is relative to the config's folder
    bad = tmp_path / "prometheus.yml"
    bad.write_text(text.replace(old, new, 1))
    out = promtool_check(bad)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr


def test_jobs_scrape_rays_discovery_file_and_keep_pushed_labels():
    from ray._private import ray_constants

    jobs = {j["job_name"]: j for j in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    ray_file = os.path.join("/tmp/ray", ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE)
    assert [f for sd in jobs["ray"]["file_sd_configs"] for f in sd["files"]] == [ray_file]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["pushgateway"]["static_configs"][0]["targets"] == ["127.0.0.1:9091"]
    assert jobs["node"]["static_configs"][0]["targets"] == ["127.0.0.1:9100"]


def test_the_config_loads_the_checked_in_alert_rules_and_they_are_what_the_code_generates(tmp_path):
    from typer.testing import CliRunner

    from mlops_ray.cli import app
    from mlops_ray.config import load_config
    from mlops_ray.monitor.alerts import alert_rules

    assert yaml.safe_load(CONFIG.read_text())["rule_files"] == [RULES.name]
    cfg = load_config(None)
    assert yaml.safe_load(RULES.read_text()) == alert_rules(cfg.monitor, cfg.name), (
        f"{RULES.relative_to(REPO)} is stale: run `mlops-ray monitor-alerts --out {RULES.relative_to(REPO)}`")
    res = CliRunner().invoke(app, ["monitor-alerts", "--out", str(tmp_path / "rules.yml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rules.yml").read_text() == RULES.read_text()
    # the check can fail: `promtool check config` reads the rule file, and a broken expression there fails it
    shutil.copy(CONFIG, tmp_path / CONFIG.name)
    (tmp_path / RULES.name).write_text(RULES.read_text().replace("max by (feature)", "max by (feature", 1))
    out = promtool_check(tmp_path / CONFIG.name)
    assert out.returncode != 0 and "mlops_ray_alerts.yml" in out.stdout + out.stderr, out.stdout + out.stderr
