"""The pipeline on a real multi-node setup: a 2-node Ray cluster and a standalone Spark cluster.

Started on loopback with explicit ports, in their own temp dirs, with Ray token
authentication on (``RAY_AUTH_MODE=token``):
- Ray: ``ray start --head`` (1 CPU) and a second node ``ray start --address`` (1 CPU), so the two
  concurrent 1-CPU Tune trials can only fit by using both nodes;
- Spark: ``cluster/spark/start-standalone.sh`` (master + one worker, from the pyspark install).

The whole pipeline goes in through ``mlops-ray submit pipeline`` (Ray's JobSubmissionClient);
a single stage through plain ``ray job submit -- python jobs/<stage>.py``. Teardown kills
exactly the processes of the temp dirs: ``ray stop`` would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO, free_port, kill_processes_under, sample_config_mapping

pytestmark = pytest.mark.timeout(900)

VENV_BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(16)


def _env(token: str | None = TOKEN, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               PYSPARK_PYTHON=sys.executable, **extra)
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


def _ray_start(args: list[str], temp_dir: str) -> None:
    os.makedirs(temp_dir, exist_ok=True)  # also the processes' working dir, so teardown finds them all
    res = subprocess.run([str(VENV_BIN / "ray"), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                          f"--object-store-memory={200 * 1024 * 1024}", f"--temp-dir={temp_dir}",
                          f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                          "--disable-usage-stats", *args], env=_env(), capture_output=True, text=True, timeout=180,
                         cwd=temp_dir)
    assert res.returncode == 0, f"ray start {args[:1]} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"


def _get(url: str, **kw) -> requests.Response:
    return requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10, **kw)


@pytest.fixture(scope="module")
def ray_cluster():
    """Head + one worker node; yields (dashboard URL, {node_id: 'head'|'worker'}, head temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="mlops_ray_2node_")
    gcs, dash = free_port(), free_port()
    try:
        # One temp dir per node: nodes sharing one would share runtime_resources/, and the worker
        # node's clean-up of a job's working dir would delete the head's copy under the driver.
        _ray_start(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                    "--include-dashboard=true", f"--ray-client-server-port={free_port()}"], f"{temp_dir}/head")
        _ray_start([f"--address=127.0.0.1:{gcs}", f"--node-manager-port={free_port()}",
                    f"--object-manager-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                    f"--dashboard-agent-grpc-port={free_port()}",  # worker ports below the ephemeral range:
                    "--min-worker-port=21000",
                    "--max-worker-port=21999"], f"{temp_dir}/worker")
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 90
        nodes: dict[str, str] = {}
        while time.monotonic() < deadline and len(nodes) < 2:
            try:
                rows = _get(f"{url}/api/v0/nodes").json()["data"]["result"]["result"]
                nodes = {n["node_id"]: ("head" if n.get("is_head_node") else "worker")
                         for n in rows if n["state"] == "ALIVE"}
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(1)
        assert sorted(nodes.values()) == ["head", "worker"], f"expected 2 alive nodes, got {nodes}"
        yield url, nodes, f"{temp_dir}/head"
    finally:
        kill_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def spark_cluster():
    """A standalone Spark master + one worker; yields (master URL, web UI URL)."""
    state = tempfile.mkdtemp(prefix="mlops_ray_spark_")
    port, webui = free_port(), free_port()
    try:
        res = subprocess.run([str(REPO / "cluster" / "spark" / "start-standalone.sh"), "--dir", state,
                              "--master-port", str(port), "--webui-port", str(webui), "--workers", "1",
                              "--worker-cores", "2", "--worker-memory", "2g", "--python", sys.executable],
                             env=_env(token=None), capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
        master = res.stdout.strip().splitlines()[-1]
        assert master == f"spark://127.0.0.1:{port}"
        yield master, f"http://127.0.0.1:{webui}"
    finally:
        subprocess.run([str(REPO / "cluster" / "spark" / "stop-standalone.sh"), "--dir", state], check=False,
                       capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def submitted_run(ray_cluster, spark_cluster, tmp_path_factory):
    """`mlops-ray submit pipeline` against both clusters; yields (home, config path, run record, output)."""
    url, _, _ = ray_cluster
    master, _ = spark_cluster
    tmp = tmp_path_factory.mktemp("multinode")
    home = tmp / "home"  # the "shared storage" of this one-machine cluster
    cfg = sample_config_mapping(free_port(), free_port(), ingest={"sample_fraction": 0.015},
                                deploy={"proxy_location": "HeadOnly"})
    cfg["engines"]["ray"] = {}  # inside a job, Ray is the cluster the job was submitted to
    cfg["engines"]["spark"] = {"master": master, "driver_memory": "1g", "shuffle_partitions": 2,
                               "driver_host": "127.0.0.1"}
    cfg_path = tmp / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([str(VENV_BIN / "mlops-ray"), "submit", "pipeline", "--address", url, "--config",
                          str(cfg_path), "--timeout-s", "700"], env=_env(MLOPS_RAY_HOME=str(home)),
                         capture_output=True, text=True, timeout=780, cwd=tmp)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-3000:]
    runs = list((home / "runs").glob("*/run.json"))
    assert len(runs) == 1
    return home, cfg_path, json.loads(runs[0].read_text()), res.stdout


def test_the_pipeline_runs_through_ray_jobs_on_two_ray_nodes_and_a_spark_cluster(submitted_run, ray_cluster,
                                                                                  spark_cluster):
    home, _, record, out = submitted_run
    url, nodes, _ = ray_cluster
    _, spark_ui = spark_cluster
    assert record["status"] == "succeeded"
    assert list(record["stages"]) == ["ingest", "validate", "preprocess", "tune", "evaluate", "explain", "register",
                                      "deploy", "smoke"]
    assert "SUCCEEDED" in out and "submitted mlops-ray-pipeline-" in out

    # Spark ran its jobs on the standalone cluster: the master lists our application, finished.
    master = requests.get(f"{spark_ui}/json/", timeout=10).json()
    apps = [a["name"] for a in master.get("completedapps", [])] + [a["name"] for a in master.get("activeapps", [])]
    assert "mlops_ray" in apps, master

    # Tune's two concurrent 1-CPU trials used both Ray nodes.
    actors = _get(f"{url}/api/v0/actors", params={"detail": "1", "limit": "1000"}).json()["data"]["result"]["result"]
    trial_nodes = {a["node_id"] for a in actors if "ImplicitFunc" in a.get("class_name", "")
                   or "Trainable" in a.get("class_name", "")}
    assert trial_nodes == set(nodes), (trial_nodes, nodes, sorted({a.get("class_name") for a in actors}))

    # The deployed endpoint (Serve on the cluster) answers after the job ended.
    smoke = record["stages"]["smoke"]["outputs"]
    assert len(smoke["answer"]["predictions"]) == len(smoke["records"]) > 0
    model = requests.get(f"{record['stages']['deploy']['outputs']['url']}/v1/model", timeout=10).json()
    assert model["version"] == record["stages"]["register"]["outputs"]["version"]


def test_tune_trials_ran_on_both_nodes_with_the_experiment_on_the_shared_home(submitted_run, ray_cluster):
    home, _, record, _ = submitted_run
    _, nodes, _ = ray_cluster
    tune_out = record["stages"]["tune"]["outputs"]
    best = json.loads((Path(tune_out["path"]) / "best.json").read_text())
    # each trial reports the Ray node it ran on; two concurrent 1-CPU trials on two 1-CPU nodes
    assert {t["node_id"] for t in best["all_trials"]} == set(nodes), (best["all_trials"], nodes)
    assert all(t["error"] is None for t in best["all_trials"])
    # the experiment (Tune's storage_path) and the attempt log live on the shared home, not in a node's temp dir
    assert Path(tune_out["path"]).is_relative_to(home)
    assert len(list((Path(tune_out["path"]) / "tune").glob("*/result.json"))) == len(best["all_trials"])
    assert len(list((Path(tune_out["path"]) / "attempts").glob("*.jsonl"))) == len(best["all_trials"])


def test_a_single_stage_runs_with_plain_ray_job_submit(submitted_run, ray_cluster):
    home, cfg_path, record, _ = submitted_run
    url, _, _ = ray_cluster
    runtime_env = {"env_vars": {"MLOPS_RAY_HOME": str(home)}, "excludes": [".venv*", ".git"]}
    res = subprocess.run([str(VENV_BIN / "ray"), "job", "submit", "--address", url, "--working-dir", str(REPO),
                          "--runtime-env-json", json.dumps(runtime_env), "--", "python", "jobs/evaluate.py",
                          "--config", str(cfg_path), "--run-id", record["run_id"]],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"run {record['run_id']}: succeeded (" in res.stdout and "evaluate=cached" in res.stdout, res.stdout[-3000:]


def test_submit_status_logs_and_stop(submitted_run, ray_cluster, tmp_path):
    home, cfg_path, record, _ = submitted_run
    url, _, _ = ray_cluster
    env = _env(MLOPS_RAY_HOME=str(home))
    mr = str(VENV_BIN / "mlops-ray")
    sub = subprocess.run([mr, "submit", "tune", "--run-id", record["run_id"], "--address", url, "--config",
                          str(cfg_path), "--no-wait"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = next(w for w in sub.stdout.split() if w.startswith("mlops-ray-tune-")).rstrip(":")
    stop = subprocess.run([mr, "submit", "stop", job_id, "--address", url], env=env, capture_output=True, text=True,
                          timeout=60)
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 60
    while True:
        st = subprocess.run([mr, "submit", "status", job_id, "--address", url, "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        info = json.loads(st.stdout)
        if info["status"] in ("STOPPED", "SUCCEEDED", "FAILED") or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert info["status"] == "STOPPED" and info["metadata"]["mlops_ray_target"] == "tune"
    logs = subprocess.run([mr, "submit", "logs", job_id, "--address", url], env=env, capture_output=True, text=True,
                          timeout=60)
    assert logs.returncode == 0

    # Token authentication is really on: without the token the cluster refuses, and the CLI says so (exit 2).
    denied = subprocess.run([mr, "submit", "status", job_id, "--address", url], env=_env(token=None),
                            capture_output=True, text=True, timeout=60)
    assert denied.returncode == 2 and ("401" in denied.stderr or "nauthorized" in denied.stderr
                                       or "token" in denied.stderr.lower()), denied.stderr


def test_the_prometheus_config_scrapes_every_ray_node_through_rays_discovery_file(ray_cluster, tmp_path):
    """cluster/prometheus/prometheus.yml's `ray` job, run by a real Prometheus, finds and scrapes both nodes."""
    url, nodes, head_dir = ray_cluster
    cfg = yaml.safe_load((REPO / "cluster" / "prometheus" / "prometheus.yml").read_text())
    ray_job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "ray")
    assert ray_job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    ray_job["file_sd_configs"][0]["files"] = [f"{head_dir}/prom_metrics_service_discovery.json"]  # this temp dir
    ray_job["file_sd_configs"][0]["refresh_interval"] = "1s"
    cfg = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [ray_job]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    prom = subprocess.Popen([shutil.which("prometheus") or "/usr/bin/prometheus",
                             f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"))
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query"
        deadline = time.monotonic() + 150  # one CI run saw only the head's series within 90 s (after the job test)
        heads: set = set()
        while time.monotonic() < deadline:
            try:
                heads = {r["metric"].get("IsHeadNode") for r in requests.get(query, timeout=5, params={
                    "query": 'count by (IsHeadNode) (ray_node_cpu_count{job="ray"})'}).json()["data"]["result"]}
                if heads == {"true", "false"}:
                    break
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(1)
        if heads != {"true", "false"}:  # say why: the discovery file, each target's health and last error
            sd = Path(head_dir, "prom_metrics_service_discovery.json")
            try:
                health = [(t["labels"].get("instance"), t.get("health"), t.get("lastError")) for t in requests.get(
                    f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]]
            except (requests.RequestException, KeyError, ValueError) as e:
                health = repr(e)
            pytest.fail(f"node metrics scraped from: {heads} (want the head and the worker node); discovery file: "
                        f"{sd.read_text() if sd.exists() else 'missing'}; targets: {health}; Prometheus log: "
                        f"{(tmp_path / 'prometheus.log').read_text()[-800:]}")
        targets = requests.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        listed = json.loads(Path(head_dir, "prom_metrics_service_discovery.json").read_text())[0]["targets"]
        assert {t["labels"]["instance"] for t in targets} == set(listed)
        assert len(listed) >= len(nodes) + 1  # every node's metrics agent, plus the head's own exporters
    finally:
        prom.terminate()
        prom.wait(timeout=20)
