"""Cluster autoscaling and token authentication on a real Ray head, shown from what happened.

The head runs Ray's autoscaler with the project's cluster/ray-autoscaling-local.yaml (node
provider ``fake_multinode``: each added "worker node" is another raylet on this machine), with
token authentication on (``RAY_AUTH_MODE=token``, the token in ``RAY_AUTH_TOKEN``), explicit
loopback ports and its own temp dir. The head has no CPUs; the model server, deployed with
``serve deploy`` from the config ``mlops-ray deploy --write-serve-config`` writes, asks for
replicas of 1 CPU each, so they fit only on nodes the autoscaler adds. Alive nodes and replica
states are sampled from the dashboard's REST API; the timelines are in the assertion messages.

Teardown kills exactly the processes of the temp dir (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import REPO, free_port, kill_processes_under

pytestmark = pytest.mark.timeout(600)  # the first test of a session also waits for the pipeline_run fixture

VENV_BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(16)
REPLICAS = 2
OBJECT_STORE_BYTES = 150 * 1024 * 1024


def _env(token: str | None = TOKEN, **extra) -> dict:
    """This process's environment with Ray's auth set explicitly: token mode with ``token``, else disabled."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0", **extra)
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"})
    return env


@dataclass(frozen=True)
class FakeCluster:
    gcs: str
    dashboard: str
    serve_port: int
    temp_dir: str

    def get(self, path: str, token: str | None = TOKEN) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.dashboard}{path}", headers=headers, timeout=10)

    def alive_nodes(self) -> dict[str, dict]:
        rows = self.get("/api/v0/nodes").json()["data"]["result"]["result"]
        return {n["node_id"]: n for n in rows if n["state"] == "ALIVE"}

    def replicas(self, app: str) -> list[dict]:
        """The app's ModelServer replicas as the Serve REST API lists them (state, node_id...)."""
        apps = self.get("/api/serve/applications/").json().get("applications") or {}
        deployment = ((apps.get(app) or {}).get("deployments") or {}).get("ModelServer") or {}
        return deployment.get("replicas") or []


@pytest.fixture(scope="module")
def fake_cluster(pipeline_run):
    """A token-authenticated head with 0 CPUs whose autoscaler adds 2-CPU worker nodes on this machine."""
    _, home, _ = pipeline_run
    temp_dir = tempfile.mkdtemp(prefix="mlops_ray_autoscale_")
    gcs_port, dash_port = free_port(), free_port()
    config = yaml.safe_load((REPO / "cluster" / "ray-autoscaling-local.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"  # the one field that depends on the port
    as_yaml = Path(temp_dir, "autoscaling.yaml")
    as_yaml.write_text(yaml.safe_dump(config))
    try:
        res = subprocess.run(
            [str(VENV_BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
             "--num-cpus=0", f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={temp_dir}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
             f"--ray-client-server-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--autoscaling-config={as_yaml}",
             "--disable-usage-stats"],
            # the autoscaler decides every second (AUTOSCALER_UPDATE_INTERVAL_S, Ray's default 5 s)
            env=_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", MLOPS_RAY_HOME=str(home.root)),
            capture_output=True, text=True,
            timeout=180, cwd=temp_dir)
        assert res.returncode == 0, f"ray start --head failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        cluster = FakeCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", free_port(), temp_dir)
        deadline = time.monotonic() + 60
        nodes: dict = {}
        while time.monotonic() < deadline and len(nodes) != 1:
            try:
                nodes = cluster.alive_nodes()
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert len(nodes) == 1, f"the head did not come up alone: {nodes}"
        yield cluster
    finally:
        kill_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _gcs_client(cluster: FakeCluster, token: str | None, timeout_s: float = 60) -> tuple[bool, str]:
    """A Python driver connecting to the GCS: (connected, what it said). A refused one retries for ~20 s;
    it is stopped as soon as it reports the GCS's answer."""
    code = (f"import ray; ray.init(address={cluster.gcs!r}, logging_level='ERROR'); "
            "print('CONNECTED', len([n for n in ray.nodes() if n['Alive']]), flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(token), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cluster.temp_dir)
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "CONNECTED" in line or "InvalidAuthToken" in line or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    out = "".join(lines)
    return "CONNECTED" in out, out[-1500:]


def test_token_auth_refuses_clients_without_the_token(fake_cluster):
    # Dashboard / REST (what `ray job submit`, `serve deploy` and browsers use)
    assert fake_cluster.get("/api/v0/nodes", token=None).status_code == 401
    assert fake_cluster.get("/api/v0/nodes", token=secrets.token_hex(16)).status_code in (401, 403)
    assert fake_cluster.get("/api/v0/nodes").status_code == 200

    # Ray's Serve CLI: refused without the token, answered with it
    cmd = [str(VENV_BIN / "serve"), "status", "-a", fake_cluster.dashboard]
    denied = subprocess.run(cmd, env=_env(token=None), capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0, denied.stdout
    assert "401" in denied.stderr + denied.stdout or "nauthorized" in denied.stderr + denied.stdout, denied.stderr[-1500:]
    allowed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 0, allowed.stderr[-1500:]

    # The GCS itself (what `ray.init` and every node talk to)
    ok, out = _gcs_client(fake_cluster, token=None)
    assert not ok and "Unauthenticated" in out and "InvalidAuthToken" in out, out
    ok, out = _gcs_client(fake_cluster, token=secrets.token_hex(16))
    assert not ok and "InvalidAuthToken" in out, out
    ok, out = _gcs_client(fake_cluster, token=TOKEN)
    assert ok, out


def _timeline(samples: list[tuple[float, int, int]]) -> str:
    """Samples (s, alive nodes, running replicas) as their changes."""
    changes = [s for i, s in enumerate(samples) if i == 0 or s[1:] != samples[i - 1][1:]]
    return " -> ".join(f"{t}s: {n} nodes/{r} replicas" for t, n, r in changes) + f" (last {samples[-1][0]} s)"


def test_nodes_are_added_while_replicas_do_not_fit_and_removed_when_idle(fake_cluster, pipeline_run, tmp_path):
    cfg, _, record = pipeline_run
    from mlops_ray.config import config_to_yaml

    raw = yaml.safe_load(config_to_yaml(cfg))
    raw["deploy"].update(host="127.0.0.1", port=fake_cluster.serve_port, proxy_location="HeadOnly",
                         num_cpus_per_replica=1.0,
                         autoscaling={"min_replicas": REPLICAS, "max_replicas": REPLICAS})
    cfg_path = tmp_path / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    serve_yaml = tmp_path / "serve.yaml"
    res = subprocess.run([str(VENV_BIN / "mlops-ray"), "deploy", "--config", str(cfg_path), "--write-serve-config",
                          str(serve_yaml)], env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    written = yaml.safe_load(serve_yaml.read_text())
    deployment = written["applications"][0]["deployments"][0]
    assert deployment["ray_actor_options"]["num_cpus"] == 1.0
    assert written["applications"][0]["args"]["config"] == str(cfg_path)

    head = set(fake_cluster.alive_nodes())
    assert fake_cluster.alive_nodes()[next(iter(head))]["resources_total"].get("CPU", 0) == 0  # nothing fits there
    app = written["applications"][0]["name"]
    t0 = time.monotonic()
    res = subprocess.run([str(VENV_BIN / "serve"), "deploy", str(serve_yaml), "-a", fake_cluster.dashboard],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

    samples: list[tuple[float, int, int]] = []
    replicas: list[dict] = []
    nodes: dict = {}

    def sample() -> None:
        nonlocal replicas, nodes
        nodes, replicas = fake_cluster.alive_nodes(), fake_cluster.replicas(app)
        samples.append((round(time.monotonic() - t0, 1), len(nodes), sum(r["state"] == "RUNNING" for r in replicas)))

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        sample()
        if samples[-1][2] == REPLICAS:
            break
        time.sleep(1)
    up_s = samples[-1][0]
    assert samples[-1][2] == REPLICAS, f"{REPLICAS} replicas never ran: {_timeline(samples)}; replicas: {replicas}"
    assert samples[0][1:] == (1, 0), f"replicas ran before any node was added: {_timeline(samples)}"
    assert samples[-1][1] >= 2, f"no node was added: {_timeline(samples)}"
    added = next(t for t, n, _ in samples if n >= 2)
    assert all(r["node_id"] not in head for r in replicas), (replicas, head)  # on added nodes, not the head

    # The replicas answer through the Serve proxy on the head, from the registered model.
    url = f"http://127.0.0.1:{fake_cluster.serve_port}"
    from mlops_ray.serve import wait_ready

    ready = wait_ready(url, 120)
    assert ready["model"]["version"] == record["stages"]["register"]["outputs"]["version"]

    # Idle: take the application down; the autoscaler removes the added nodes after idle_timeout_minutes.
    res = subprocess.run([str(VENV_BIN / "serve"), "shutdown", "-a", fake_cluster.dashboard, "-y"], env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    down_from = round(time.monotonic() - t0, 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        nodes = fake_cluster.alive_nodes()
        samples.append((round(time.monotonic() - t0, 1), len(nodes), 0))
        if set(nodes) == head:
            break
        time.sleep(1)
    assert set(nodes) == head, f"added nodes were not removed after Serve shut down at {down_from} s: " \
                               f"{_timeline(samples)}"
    print(f"\nnode timeline (serve deploy at 0 s; node added at {added} s; {REPLICAS} replicas running at {up_s} s; "
          f"serve shutdown at {down_from} s; back to the head at {samples[-1][0]} s): {_timeline(samples)}")
