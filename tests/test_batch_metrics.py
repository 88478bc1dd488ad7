"""Batch metrics of a run: node-exporter textfile and a real Prometheus Pushgateway (Debian package)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from mlops_ray.config import config_from_mapping
from mlops_ray.errors import StageError
from mlops_ray.home import Home
from mlops_ray.pipeline import STAGE_SPECS, run_pipeline
from tests.conftest import free_port
from tests.test_runner import _NoSessions

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or "/usr/bin/prometheus-pushgateway"


def _samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _fake_stages(monkeypatch, fail_validate: bool = False):
    def ingest(cfg, s, record, home):
        return {"path": "/p", "key": "k", "rows": {"flights": 1000}, "cache_hit": False}

    def validate(cfg, s, record, home):
        if fail_validate:
            raise ValueError("planted failure")
        return {"path": "/v", "key": "k2", "rows_in": 1000, "rows_valid": 970,
                "quarantined": {"no_outcome": 25, "bad_hhmm": 5}, "cache_hit": False}

    for name, fn in (("ingest", ingest), ("validate", validate)):
        monkeypatch.setitem(STAGE_SPECS, name, dataclasses.replace(STAGE_SPECS[name], func=fn))


@pytest.fixture(scope="module")
def pushgateway():
    """A real Pushgateway on a free loopback port, without persistence."""
    port = free_port()
    proc = subprocess.Popen([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"Pushgateway did not start on {url}: {proc.stderr.read()[-500:]!r}")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_textfile_holds_the_contract_metrics_and_a_failed_run_keeps_the_last_success(monkeypatch, tmp_path):
    home = Home.resolve(tmp_path / "home").ensure()
    cfg = config_from_mapping({"automate": {"retry": {"max_attempts": 1}}})
    _fake_stages(monkeypatch)
    before = time.time()
    run_pipeline(cfg, sessions=_NoSessions(), home=home, to_stage="validate")
    path = home.root / "metrics" / "flights.prom"
    got = _samples(path.read_text())
    assert got[("mlops_rows_total", (("outcome", "quarantined"), ("pipeline", "flights"), ("stage", "validate")))] == 30
    assert got[("mlops_rows_total", (("outcome", "read"), ("pipeline", "flights"), ("stage", "ingest")))] == 1000
    assert ("mlops_stage_duration_seconds", (("pipeline", "flights"), ("stage", "ingest"))) in got
    last_ok = got[("mlops_last_success_timestamp_seconds", (("pipeline", "flights"),))]
    assert before <= last_ok <= time.time()
    assert got[("mlops_run_status", (("pipeline", "flights"), ("status", "succeeded")))] == 1

    _fake_stages(monkeypatch, fail_validate=True)
    with pytest.raises(StageError):
        run_pipeline(cfg, sessions=_NoSessions(), home=home, to_stage="validate")
    got = _samples(path.read_text())
    assert got[("mlops_last_success_timestamp_seconds", (("pipeline", "flights"),))] == last_ok
    assert got[("mlops_run_status", (("pipeline", "flights"), ("status", "failed")))] == 1
    assert got[("mlops_stage_duration_seconds", (("pipeline", "flights"), ("stage", "validate")))] >= 0  # the failed stage
    assert not [k for k in got if k[0].endswith("_created")]


def test_metrics_reach_a_real_pushgateway_and_a_failed_run_leaves_the_last_success(monkeypatch, tmp_path, pushgateway):
    home = Home.resolve(tmp_path / "home").ensure()
    cfg = config_from_mapping({"automate": {"retry": {"max_attempts": 1},
                                            "metrics": {"pushgateway_url": pushgateway,
                                                        "textfile_path": str(tmp_path / "m.prom")}}})
    _fake_stages(monkeypatch)
    rec = run_pipeline(cfg, sessions=_NoSessions(), home=home, to_stage="validate")
    assert rec["batch_metrics"]["errors"] == []
    got = _samples(requests.get(f"{pushgateway}/metrics", timeout=5).text)
    key = (("instance", ""), ("job", "mlops_ray"), ("outcome", "valid"), ("pipeline", "flights"), ("stage", "validate"))
    assert got[("mlops_rows_total",) + (key,)] == 970
    last_ok = got[("mlops_last_success_timestamp_seconds", (("instance", ""), ("job", "mlops_ray"),
                                                            ("pipeline", "flights")))]

    _fake_stages(monkeypatch, fail_validate=True)
    with pytest.raises(StageError):
        run_pipeline(cfg, sessions=_NoSessions(), home=home, to_stage="validate")
    got = _samples(requests.get(f"{pushgateway}/metrics", timeout=5).text)
    assert got[("mlops_last_success_timestamp_seconds", (("instance", ""), ("job", "mlops_ray"),
                                                         ("pipeline", "flights")))] == last_ok
    assert got[("mlops_run_status", (("instance", ""), ("job", "mlops_ray"), ("pipeline", "flights"),
                                     ("status", "failed")))] == 1


def test_an_unreachable_pushgateway_is_reported_not_fatal(monkeypatch, tmp_path):
    home = Home.resolve(tmp_path / "home").ensure()
    url = f"http://127.0.0.1:{free_port()}"
    cfg = config_from_mapping({"automate": {"metrics": {"pushgateway_url": url, "push_timeout_s": 2}}})
    _fake_stages(monkeypatch)
    rec = run_pipeline(cfg, sessions=_NoSessions(), home=home, to_stage="validate")
    assert rec["status"] == "succeeded"
    assert len(rec["batch_metrics"]["errors"]) == 1 and url in rec["batch_metrics"]["errors"][0]


def test_textfile_path_must_end_in_prom():
    from mlops_ray.errors import ConfigError

    with pytest.raises(ConfigError, match=r"automate.metrics.textfile_path must end in '.prom'.*got 'x.txt'"):
        config_from_mapping({"automate": {"metrics": {"textfile_path": "x.txt"}}})
