"""Shared fixtures: one SparkSession, one local Ray and one pipeline run per test session; a
standalone Spark cluster and a PostgreSQL server for the tests that need them.

Services bind to loopback on explicit free ports. The pipeline fixture runs the real stages
on a sample of the real 2013 flights (ingest -> ... -> deploy on Ray Serve) once; the
integration tests read what it produced.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's processes export their metrics every metrics_report_interval_ms (default 10 s; Ray floors it at 1 s): at 1 s
# the tests that poll a real Prometheus see a request counted within seconds instead of waiting up to 10 s a step.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
# Serve's replicas and handles push the ongoing-request counts its autoscaler decides on every 10 s by default; at
# 1 s the counts in the autoscaling tests' look-back window are never more than a second old.
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "1")

#: JVMs of the tests (the session's Spark driver, the CLI's, the standalone cluster's daemons and executors) start
#: and run the sample's small jobs faster with the C1 compiler only and the serial GC (C2 and a parallel GC pay off
#: only on long jobs): measured here, the sample pipeline's ingest took 10 s instead of 25 s, the fixture 78 s
#: instead of 95 s and a `mlops-ray monitor` run 19 s instead of 26 s. Users' JVMs keep the JVM's defaults.
FAST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
os.environ.setdefault("JAVA_TOOL_OPTIONS", FAST_JVM_OPTIONS)

REPO = Path(__file__).resolve().parent.parent

#: Sample of the flights kept by the integration runs (about 13,000 flights, all months).
SAMPLE_FRACTION = 0.04

#: The PostgreSQL JDBC driver of Debian's libpostgresql-jdbc-java (scripts/test.sh installs it).
POSTGRES_JDBC_JAR = "/usr/share/java/postgresql.jar"


def _ephemeral_start() -> int:
    """First port of the kernel's range for the local ends of outgoing connections (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: free_port hands out ports from here up (below: Ray's default worker ports, then explicit test ranges).
WORKER_PORT_RANGES_END = 23000
#: Ports handed out by free_port in this session (never handed out twice).
_GIVEN: set[int] = set()
_PORTS = random.Random(os.getpid())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, from 23000 up to the kernel's ephemeral range.

    Not an ephemeral port (``bind(0)``): a port chosen there for a later server (Ray's metrics export, a
    dashboard) can be taken meanwhile by any outgoing connection's local end, as seen here: Ray's dashboard
    agent failed with "Address already in use" and the local Ray did not start. Below 20000 are Ray's worker
    ports (10002-19999 by default); 20000-22999 are left to worker-port ranges tests give explicitly
    (tests/test_multinode.py: 21000-21999).
    """
    lo = WORKER_PORT_RANGES_END
    hi = min(_ephemeral_start(), 32768) - 1
    for _ in range(200):
        port = _PORTS.randint(lo, hi)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {lo}-{hi} after 200 tries")


#: The Serve HTTP port of the session's local Ray (one Serve proxy per cluster: every application
#: deployed in the test session answers there, each under its own route prefix).
SERVE_PORT = free_port()


def pids_under(temp_dir: str) -> list[int]:
    """Processes of a cluster started in ``temp_dir``: it is in their command line, working dir or open files.

    Ray renames some of its processes (``ray::DashboardAgent``...), so the command line alone misses them.
    """
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()] if temp_dir not in cmdline + cwd else []
        except OSError:
            continue
        if temp_dir in cmdline or cwd.startswith(temp_dir) or any(f.startswith(temp_dir) for f in fds):
            pids.append(int(proc.name))
    return pids


def kill_processes_under(temp_dir: str) -> None:
    """SIGKILL every process of ``temp_dir`` (a few rounds, for children a dying parent started meanwhile)."""
    for _ in range(4):
        pids = pids_under(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(0.5)


def sample_config_mapping(serve_port: int, metrics_port: int, **overrides) -> dict:
    """Config for a quick real run: 4% sample, 1 trial per family (2 trials), loopback ports."""
    cfg = {
        "engines": {"spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"},
                    "ray": {"num_cpus": 2, "include_dashboard": False, "metrics_export_port": metrics_port,
                            "object_store_memory_bytes": 300 * 1024 * 1024}},
        "ingest": {"sample_fraction": SAMPLE_FRACTION},
        "tune": {"num_samples": 1,
                 "search_space": {
                     "logistic_regression": {"C": {"distribution": "fixed", "value": 1.0}},
                     "hist_gradient_boosting": {"learning_rate": {"distribution": "fixed", "value": 0.1},
                                                "max_leaf_nodes": {"distribution": "fixed", "value": 31},
                                                "max_iter": {"distribution": "fixed", "value": 100}}}},
        # online drift off here: the session's endpoint gets test-split rows from many tests, whose weather has
        # drifted (PSI > 2); tests/monitor/test_online_live.py deploys its own app with it on
        "monitor": {"online": False},
        "deploy": {"port": serve_port, "smoke_records": 3, "num_cpus_per_replica": 0.25,
                   "autoscaling": {"min_replicas": 1, "max_replicas": 1}, "max_request_bytes": 65536,
                   "max_records": 50},
    }
    for k, v in overrides.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


@pytest.fixture(scope="session")
def sessions():
    """One Sessions object (Spark and Ray started lazily) for the whole test session.

    Its SparkSession carries the PostgreSQL JDBC driver when installed (a session's jars are fixed at
    start); the JDBC tests fail with the install command when it is not.
    """
    from mlops_ray.config import config_from_mapping
    from mlops_ray.sessions import Sessions

    cfg = config_from_mapping(sample_config_mapping(free_port(), free_port()))
    s = Sessions(cfg.engines, extra_jars=(POSTGRES_JDBC_JAR,) if os.path.isfile(POSTGRES_JDBC_JAR) else ())
    yield s
    s.close()


@pytest.fixture(scope="session")
def spark(sessions):
    return sessions.spark


@pytest.fixture(scope="session")
def pipeline_run(sessions, tmp_path_factory):
    """The real pipeline on a sample, run once: returns (config, home, run record)."""
    from mlops_ray.config import config_from_mapping
    from mlops_ray.home import Home
    from mlops_ray.pipeline import run_pipeline

    home = Home.resolve(tmp_path_factory.mktemp("home")).ensure()
    cfg = config_from_mapping(sample_config_mapping(SERVE_PORT, sessions.engines.ray.metrics_export_port))
    record = run_pipeline(cfg, sessions=sessions, home=home, release_spark=False)
    return cfg, home, record


@pytest.fixture(scope="session")
def endpoint(pipeline_run) -> str:
    """Base URL of the deployed model server."""
    return pipeline_run[2]["stages"]["deploy"]["outputs"]["url"]


# ------------------------------------------------------------ Spark standalone
#: The environment of the test clusters' JVMs (daemons, their executors, test drivers): see FAST_JVM_OPTIONS.
FAST_JVM = {"JAVA_TOOL_OPTIONS": FAST_JVM_OPTIONS}


@dataclass(frozen=True)
class SparkStandalone:
    """A running standalone Spark master with one worker on loopback (cluster/spark/start-standalone.sh)."""

    url: str
    webui_port: int
    dir: Path

    def state(self) -> dict:
        """The master's ``/json/`` (workers, active and completed applications)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/", timeout=5) as r:
            return json.load(r)


@pytest.fixture(scope="session")
def spark_standalone(tmp_path_factory):
    """A standalone Spark master + one worker (2 cores, 2 GiB) on free loopback ports for the test session.

    Started and stopped with the repository's own scripts; the stop script kills exactly the
    processes whose pids the start script wrote under the state folder.
    """
    state = tmp_path_factory.mktemp("spark-standalone")
    port, webui = free_port(), free_port()
    scripts = REPO / "cluster" / "spark"
    try:
        res = subprocess.run([str(scripts / "start-standalone.sh"), "--dir", str(state), "--master-port", str(port),
                              "--webui-port", str(webui), "--workers", "1", "--worker-cores", "2",
                              "--worker-memory", "2g", "--python", sys.executable, "--timeout-s", "120"],
                             capture_output=True, text=True, timeout=180, env={**os.environ, **FAST_JVM})
        if res.returncode != 0:
            pytest.fail(f"start-standalone.sh failed ({res.returncode}):\n{res.stderr[-3000:]}")
        url = res.stdout.strip().splitlines()[-1]
        assert url == f"spark://127.0.0.1:{port}", res.stdout
        yield SparkStandalone(url=url, webui_port=webui, dir=state)
    finally:
        subprocess.run([str(scripts / "stop-standalone.sh"), "--dir", str(state)], capture_output=True, timeout=120)


# ------------------------------------------------------------------ PostgreSQL
def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server program (Debian's /usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: scripts/test.sh installs Debian's postgresql package")
    return found[-1]


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:  # initdb refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


@dataclass(frozen=True)
class PostgresServer:
    """A running PostgreSQL server on loopback.

    The superuser ``postgres`` connects without a password (trust); every other role must give its
    password (scram-sha-256), so a test can prove credentials are really sent.
    """

    host: str
    port: int

    def uri(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        """libpq/SQLAlchemy URI of ``database``."""
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def jdbc_url(self, database: str) -> str:
        """JDBC URL of ``database`` (no credentials)."""
        return f"jdbc:postgresql://{self.host}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (owned by postgres); its URI."""
        import psycopg

        with psycopg.connect(self.uri(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1:<free port> for the whole test session; stopped afterwards."""
    root = tempfile.mkdtemp(prefix="mlops_ray_pg_")
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.makedirs(sock)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    _as_postgres([pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8"])
    hba = Path(data) / "pg_hba.conf"
    hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\n"
                   "host all all 127.0.0.1/32 scram-sha-256\n")
    if os.geteuid() == 0:
        shutil.chown(hba, "postgres")
    port = free_port()
    _as_postgres([pg_bin("pg_ctl"), "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60", "-o",
                  f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not accept connections within 30 s")
            time.sleep(0.2)
        yield PostgresServer("127.0.0.1", port)
    finally:
        _as_postgres([pg_bin("pg_ctl"), "-D", data, "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ Prometheus
@contextmanager
def running_prometheus(folder: Path, metrics_port: int, rule_files: tuple[str, ...] = ()):
    """A real Prometheus (Debian's ``prometheus``) on a free loopback port, scraping Ray's metrics export port
    ``127.0.0.1:<metrics_port>`` every second and evaluating ``rule_files`` every second; yields its base URL.

    Its config, TSDB and log live in ``folder``; it is stopped on exit. Fails the test (with the end of the
    log) when the binary is missing or the server is not ready within 60 s.
    """
    import requests
    import yaml

    conf: dict = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                  "scrape_configs": [{"job_name": "ray", "static_configs": [
                      {"targets": [f"127.0.0.1:{metrics_port}"]}]}]}
    if rule_files:
        conf["rule_files"] = list(rule_files)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(conf))
    binary = shutil.which("prometheus") or pytest.fail("prometheus not found: scripts/test.sh installs Debian's "
                                                       "prometheus package (apt-get install prometheus)")
    port = free_port()
    log = folder / "prometheus.log"
    proc = subprocess.Popen([binary, f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Prometheus not ready within 60 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
