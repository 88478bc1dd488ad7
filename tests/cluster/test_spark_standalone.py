"""cluster/spark/: a real standalone Spark cluster on loopback runs a job, serves Spark Connect, and stops.

One module-scoped cluster (1 master + 1 worker, 1 core, 1g) on free ports; the tests run in file
order: the job first (it needs the worker's only core), then the Connect server (it keeps the
core), then stop. A planted busy port shows start-up failures are caught and cleaned up.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import FAST_JVM, REPO, free_port

SPARK = REPO / "cluster" / "spark"
START, STOP, CONNECT = SPARK / "start-standalone.sh", SPARK / "stop-standalone.sh", SPARK / "start-connect.sh"


@dataclass
class Standalone:
    url: str
    webui_port: int
    dir: Path

    def json(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=5) as r:
            return json.load(r)


def run(*argv, timeout: float = 150, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **FAST_JVM, **(env or {})})


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = run("ps", "-o", "stat=", "-p", pid).stdout.strip()
    return bool(state) and not state.startswith("Z")


def spark_defaults() -> dict[str, str]:
    pairs = (line.split(None, 1) for line in (SPARK / "spark-defaults.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k: v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    d = tmp_path_factory.mktemp("spark-standalone")
    port, webui = free_port(), free_port()
    out = run(START, "--dir", d, "--master-port", port, "--webui-port", webui, "--workers", 1,
              "--worker-cores", 1, "--worker-memory", "1g", "--timeout-s", 120)
    assert out.returncode == 0, out.stderr
    yield Standalone(url=out.stdout.strip().splitlines()[-1], webui_port=webui, dir=d)
    run(STOP, "--dir", d)  # no-op when the stop test already ran


def test_start_prints_the_master_url_and_the_master_lists_one_alive_worker(standalone):
    assert standalone.url == f"spark://127.0.0.1:{standalone.url.rsplit(':', 1)[1]}"
    state = standalone.json()
    assert state["url"] == standalone.url and state["status"] == "ALIVE"
    assert state["aliveworkers"] == 1
    (worker,) = state["workers"]
    assert (worker["state"], worker["host"], worker["cores"], worker["memory"]) == ("ALIVE", "127.0.0.1", 1, 1024)
    assert sorted(p.name for p in (standalone.dir / "pids").iterdir()) == ["master.pid", "worker-1.pid"]


JOB = """
import json, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master(sys.argv[1]).appName("cluster-test")
         .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false").getOrCreate())
total = spark.range(1000).groupBy().sum("id").collect()[0][0]
conf = dict(spark.sparkContext.getConf().getAll())
print(json.dumps({"sum": total, "app_id": spark.sparkContext.applicationId, "conf": conf}))
spark.stop()
"""


def test_a_pyspark_job_runs_on_the_cluster_with_the_example_spark_defaults(standalone):
    env = {"SPARK_CONF_DIR": str(SPARK), "PYSPARK_PYTHON": sys.executable}
    out = run(sys.executable, "-c", JOB, standalone.url, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["sum"] == 499500
    assert result["app_id"].startswith("app-")  # an application of a standalone master, not local-*
    defaults = spark_defaults()
    assert defaults.pop("spark.master") == "spark://127.0.0.1:7077"  # the builder's master wins over the file
    assert {k: result["conf"].get(k) for k in defaults} == defaults
    deadline = time.monotonic() + 30
    while result["app_id"] not in {a["id"] for a in standalone.json()["completedapps"]}:
        assert time.monotonic() < deadline, "the master never listed the job as a completed application"
        time.sleep(0.5)


def test_connect_server_starts_on_its_port_and_joins_the_cluster(standalone):
    port = free_port()
    out = run(CONNECT, "--dir", standalone.dir, "--port", port, "--timeout-s", 120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"sc://127.0.0.1:{port}"
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert "Spark Connect server" in {a["name"] for a in standalone.json()["activeapps"]}
    assert alive(int((standalone.dir / "pids" / "connect.pid").read_text()))


def test_stop_kills_exactly_the_started_processes(standalone):
    pid_files = sorted((standalone.dir / "pids").glob("*.pid"))
    pids = [int(p.read_text()) for p in pid_files]
    assert [p.name for p in pid_files] == ["connect.pid", "master.pid", "worker-1.pid"] and all(map(alive, pids))
    decoy = subprocess.Popen(["sleep", "60"])  # not Spark: a pid file pointing at it must not get it killed
    (standalone.dir / "pids" / "worker-9.pid").write_text(str(decoy.pid))
    try:
        out = run(STOP, "--dir", standalone.dir)
        assert out.returncode == 0, out.stderr
        assert not any(map(alive, pids))
        assert decoy.poll() is None, "stop-standalone.sh killed a process it did not start"
        assert list((standalone.dir / "pids").glob("*.pid")) == []
    finally:
        decoy.kill()
        decoy.wait()


def test_start_fails_fast_with_the_log_tail_and_leaves_nothing_when_the_port_is_busy(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run(START, "--dir", tmp_path, "--master-port", port, "--webui-port", free_port(), "--workers", 1,
                  "--timeout-s", 120)
    assert out.returncode == 1
    assert "ERROR: the master" in out.stderr and "Address already in use" in out.stderr
    assert out.stdout == ""
    assert list((tmp_path / "pids").glob("*.pid")) == []


def test_connect_server_fails_fast_with_the_error_and_leaves_nothing_when_its_port_is_busy(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = run(CONNECT, "--dir", tmp_path, "--port", busy.getsockname()[1], "--master", "local[1]",
                  "--timeout-s", 120)
    assert out.returncode == 1
    assert "ERROR: the server exited during start-up" in out.stderr and "BindException" in out.stderr
    assert out.stdout == "" and not (tmp_path / "pids" / "connect.pid").exists()


@pytest.mark.parametrize("script, args, code, message", [
    (START, ["--help"], 0, "Usage: cluster/spark/start-standalone.sh --dir DIR"),
    (START, [], 2, "--dir is required"),
    (START, ["--dir", "/tmp/x", "--worker-memory", "lots"], 2, "--worker-memory must look like 512m or 2g; got 'lots'"),
    (START, ["--dir", "/tmp/x", "--master-port", "99999"], 2, "--master-port must be a port number"),
    (START, ["--dir", "/tmp/x", "--join", "127.0.0.1:7077"], 2, "--join must look like spark://HOST:PORT"),
    (CONNECT, ["--help"], 0, "Usage: cluster/spark/start-connect.sh --dir DIR"),
    (CONNECT, ["--dir", "/tmp/x", "--port", "0"], 2, "--port must be a port number"),
    (STOP, ["--help"], 0, "Usage: cluster/spark/stop-standalone.sh --dir DIR"),
    (STOP, ["--dir"], 2, "--dir needs a value"),
], ids=["start help", "start no dir", "start bad memory", "start bad port", "start bad join url",
        "connect help", "connect bad port", "stop help", "stop no dir value"])
def test_script_usage_errors(script, args, code, message):
    out = run(script, *args, timeout=30)
    assert out.returncode == code
    assert message in out.stdout + out.stderr


def test_standalone_pipeline_config_loads_and_points_at_the_scripts_default_master():
    from mlops_ray.config import load_config

    cfg = load_config(SPARK / "flights-standalone.yaml")
    assert cfg.engines.spark.master == spark_defaults()["spark.master"] == "spark://127.0.0.1:7077"
    assert 'MASTER_PORT="${SPARK_MASTER_PORT:-7077}"' in START.read_text()
