"""The Grafana dashboard: generated from code, checked in unchanged, every query valid PromQL that aggregates
away Ray's per-replica labels. (tests/monitor/test_online_live.py runs every query against a real Prometheus.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.config import MonitorConfig, load_config
from mlops_ray.monitor.dashboard import CHECKED_IN, dashboard, dashboard_json, panel_queries

REPO = Path(__file__).resolve().parents[2]


def test_the_checked_in_dashboard_is_what_the_code_generates_for_the_bundled_config():
    cfg = load_config(None)
    assert (REPO / CHECKED_IN).read_text() == dashboard_json(cfg.monitor, cfg.name), (
        f"{CHECKED_IN} is stale: run `mlops-ray monitor-dashboard --out {CHECKED_IN}`")


def test_the_cli_writes_the_same_file(tmp_path):
    res = CliRunner().invoke(app, ["monitor-dashboard", "--out", str(tmp_path / "d.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "d.json").read_text() == (REPO / CHECKED_IN).read_text()


def test_every_panel_has_queries_on_the_prometheus_datasource_variable():
    d = dashboard(MonitorConfig(), "flights")
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert {p["title"] for p in panels} == set(panel_queries(MonitorConfig()))
    assert d["templating"]["list"][0] | {"type": "datasource", "query": "prometheus"} == d["templating"]["list"][0]
    for p in panels:
        assert p["targets"] and all(t["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and t["expr"]
                                    for t in p["targets"]), p["title"]
    ids = [p["id"] for p in d["panels"]]
    assert len(set(ids)) == len(ids)
    psi = next(p for p in panels if p["title"] == "PSI per feature")
    assert psi["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] == MonitorConfig().psi_threshold


def test_every_query_is_valid_promql_and_aggregates_ray_labels_away(tmp_path):
    promtool = shutil.which("promtool") or pytest.fail("promtool not found: apt-get install prometheus")
    queries = [q for qs in panel_queries(MonitorConfig()).values() for q in qs]
    for q in queries:  # every metric selector sits inside an aggregation (sum/max by the contract's labels)
        assert re.match(r"^\(?(sum|max|histogram_quantile)\b", q), q
        assert not re.search(r"by \([^)]*(replica|WorkerId|instance|Component|NodeAddress)", q), q
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:{i}", "expr": q}
                                                      for i, q in enumerate(queries)]}]}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(tmp_path / "r.yml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # the check can fail: a broken expression is rejected
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "bad", "expr": "sum by (feature (ray_mlops_feature_psi)"}]}]}))
    assert subprocess.run([promtool, "check", "rules", str(tmp_path / "bad.yml")], capture_output=True).returncode != 0
