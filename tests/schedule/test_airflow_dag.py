"""The generated Airflow DAG: rendered here, parsed by real Airflow, its tasks run on a real Ray.

Airflow lives in its own venv (``.venv-airflow``, made by ``scripts/setup_airflow.sh``; it
conflicts with Ray Serve), so everything Airflow does runs there in a subprocess: the scripts
``airflow_dagbag_check.py`` (DagBag, the scheduler's parser) and ``airflow_task_check.py``
(the stage tasks' own callables against a real ``ray start --head`` with token auth).

Regenerate the committed example after changing the template:
    .venv/bin/python -m tests.schedule.test_airflow_dag
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from mlops_ray.errors import ConfigError
from mlops_ray.pipeline import STAGES
from mlops_ray.schedule.airflow import airflow_dag_source, write_airflow_dag
from tests.conftest import REPO, free_port, kill_processes_under

HERE = Path(__file__).resolve().parent
EXAMPLE = REPO / "cluster" / "airflow" / "mlops_ray_dag.py"
#: The arguments the committed example was rendered with (bundled flights config, local head).
EXAMPLE_ARGS = dict(
    dag_id="mlops_ray_flights", stages=STAGES, ray_address="http://127.0.0.1:8265",
    config_path="mlops_ray/configs/flights.yaml", mlops_ray_home="/mnt/shared/mlops_ray", working_dir=None,
    schedule="@daily", retries=2, retry_delay_s=60, retry_exponential_backoff=2.0, execution_timeout_s=3 * 3600,
    ray_auth_token_env=None)
VENV_BIN = Path(sys.executable).parent


def _airflow_python() -> Path:
    venv = Path(os.environ.get("MLOPS_RAY_AIRFLOW_VENV", REPO / ".venv-airflow"))
    py = venv / "bin" / "python"
    if not py.is_file():
        pytest.fail(f"Airflow's virtual environment {venv} is missing: create it with `bash scripts/setup_airflow.sh` "
                    f"(Airflow needs its own venv: it conflicts with Ray Serve).")
    return py


def _run_in_airflow(args: list[str], tmp_path: Path, timeout_s: float, **extra_env) -> None:
    """Run ``args`` with Airflow's Python; AIRFLOW_HOME in tmp_path, no examples, no database needed."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "AIRFLOW_HOME": str(tmp_path / "airflow_home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **extra_env}
    res = subprocess.run([str(_airflow_python()), *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                         cwd=tmp_path)
    assert res.returncode == 0, f"{args[0]} failed in Airflow's venv:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"


def _imported_modules(source: str) -> set[str]:
    """Top-level names of every module ``source`` imports, at any depth (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _foreign_imports(source: str) -> set[str]:
    """Imports that are neither the Python stdlib nor Airflow (what Airflow's venv could not load)."""
    return {m for m in _imported_modules(source) if m not in sys.stdlib_module_names and m != "airflow"}


# ----------------------------------------------------------------------------- render (main venv)
@pytest.mark.timeout(30)
def test_committed_example_is_a_fresh_render(tmp_path):
    fresh = write_airflow_dag(tmp_path / "mlops_ray_dag.py", **EXAMPLE_ARGS).read_text()
    assert EXAMPLE.read_text() == fresh, (
        f"{EXAMPLE.relative_to(REPO)} is stale: regenerate it with "
        "`.venv/bin/python -m tests.schedule.test_airflow_dag`")


@pytest.mark.timeout(30)
def test_rendered_dag_imports_only_airflow_and_the_stdlib():
    source = airflow_dag_source(**{**EXAMPLE_ARGS, "working_dir": "s3://bucket/mlops_ray.zip",
                                   "ray_auth_token_env": "RAY_AUTH_TOKEN"})
    imported = _imported_modules(source)
    assert "airflow" in imported and not imported & {"ray", "mlops_ray"}
    assert _foreign_imports(source) == set()
    # the check can fail: an import hidden in a function is found
    planted = source.replace("    digest = hashlib", "    import ray  # planted\n    digest = hashlib", 1)
    assert _foreign_imports(planted) == {"ray"}


@pytest.mark.timeout(30)
def test_rendered_values_are_python_literals_not_code():
    source = airflow_dag_source(**{**EXAMPLE_ARGS, "config_path": "x'); import os; os.system('id'); ('",
                                   "stages": ("tune", "evaluate")})
    module = ast.parse(source)
    consts = {t.id: node.value for node in module.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name)}
    assert ast.literal_eval(consts["CONFIG_PATH"]) == "x'); import os; os.system('id'); ('"
    assert ast.literal_eval(consts["STAGES"]) == ("tune", "evaluate")
    code = ast.Module(body=[n for n in module.body if not isinstance(n, ast.Assign)], type_ignores=[])
    assert "os.system" not in ast.unparse(code)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("override, match", [
    ({"stages": ()}, r"'stages' argument .* non-empty sequence"),
    ({"stages": ("ingest", "train")}, r"unknown stage\(s\) \['train'\]"),
    ({"stages": ("validate", "ingest")}, r"each stage once, in pipeline order"),
    ({"stages": ("ingest", "ingest")}, r"each stage once, in pipeline order"),
    ({"dag_id": "my dag"}, r"'dag_id' .* Got 'my dag' instead"),
    ({"ray_address": "127.0.0.1:8265"}, r"'ray_address' .* 'http://HOST:PORT'"),
    ({"ray_address": "http://head:8265/api/jobs"}, r"'ray_address'"),
    ({"mlops_ray_home": ".mlops_ray"}, r"'mlops_ray_home' .* absolute path .* Got '.mlops_ray' instead"),
    ({"working_dir": "/home/me/mlops_ray"}, r"'working_dir' .* takes no local directory"),
    ({"working_dir": "ftp://host/p.zip"}, r"'working_dir' .* remote URI"),
    ({"config_path": ""}, r"'config_path'"),
    ({"schedule": " "}, r"'schedule'"),
    ({"retries": -1}, r"'retries' .* >= 0. Got -1 instead"),
    ({"retries": 1.5}, r"'retries' .* integer"),
    ({"retry_delay_s": 0}, r"'retry_delay_s' .* > 0"),
    ({"retry_delay_s": float("inf")}, r"'retry_delay_s'"),
    ({"retry_exponential_backoff": True}, r"'retry_exponential_backoff' .* Airflow 3 reads True as 1"),
    ({"retry_exponential_backoff": -2.0}, r"'retry_exponential_backoff' .* >= 0"),
    ({"execution_timeout_s": 0}, r"'execution_timeout_s' .* > 0, or None"),
    ({"ray_auth_token_env": "RAY AUTH"}, r"'ray_auth_token_env' .* environment variable name"),
    ({"poll_interval_s": 0}, r"'poll_interval_s'"),
])
def test_bad_arguments_are_refused_with_the_argument_named(override, match):
    with pytest.raises(ConfigError, match=match):
        airflow_dag_source(**{**EXAMPLE_ARGS, **override})


# ------------------------------------------------------------------ parsed by Airflow (its venv)
@pytest.mark.timeout(120)
def test_airflow_dagbag_loads_one_task_per_stage_chained_with_the_retry_settings(tmp_path):
    good, bad = tmp_path / "dags_good", tmp_path / "dags_bad"
    stages = ("ingest", "validate", "preprocess", "tune", "evaluate")
    args = {**EXAMPLE_ARGS, "dag_id": "flights_nightly", "stages": stages, "schedule": "30 2 * * *", "retries": 3,
            "retry_delay_s": 45, "retry_exponential_backoff": 3.0, "execution_timeout_s": 5400,
            "working_dir": "https://artifacts.example/mlops_ray.zip", "ray_auth_token_env": "RAY_AUTH_TOKEN"}
    write_airflow_dag(good / "mlops_ray_dag.py", **args)
    shutil.copy(EXAMPLE, good / "example_dag.py")
    # planted faults: a syntax error, and a DAG that imports ray (absent from Airflow's venv)
    write_airflow_dag(bad / "mlops_ray_dag.py", **args)
    (bad / "broken_syntax.py").write_text("from airflow.sdk import DAG\nwith DAG(dag_id='broken' as dag:\n    pass\n")
    (bad / "imports_ray.py").write_text(
        airflow_dag_source(**{**args, "dag_id": "needs_ray"}).replace("import json\n", "import json\nimport ray\n"))
    out = tmp_path / "dagbag.json"

    _run_in_airflow([str(HERE / "airflow_dagbag_check.py"), str(out), str(good), str(bad)], tmp_path, timeout_s=110)
    report = json.loads(out.read_text())

    ok = report[str(good)]
    assert ok["import_errors"] == {} and ok["warnings"] == {}
    assert sorted(ok["dags"]) == ["flights_nightly", "mlops_ray_flights"]
    dag = ok["dags"]["flights_nightly"]
    assert (dag["schedule"], dag["catchup"], dag["max_active_runs"]) == ("30 2 * * *", False, 1)
    assert [t["task_id"] for t in dag["tasks"]] == list(stages)
    for i, t in enumerate(dag["tasks"]):
        assert t["upstream"] == list(stages[i - 1:i]) and t["downstream"] == list(stages[i + 1:i + 2]), t
        assert (t["retries"], t["retry_delay_s"], t["retry_exponential_backoff"], t["execution_timeout_s"]) == \
            (3, 45.0, 3.0, 5400.0)
    example = ok["dags"]["mlops_ray_flights"]
    assert [t["task_id"] for t in example["tasks"]] == list(STAGES) and example["schedule"] == "@daily"
    assert {(t["retries"], t["retry_delay_s"], t["retry_exponential_backoff"], t["execution_timeout_s"])
            for t in example["tasks"]} == {(2, 60.0, 2.0, 10800.0)}

    broken = report[str(bad)]
    assert sorted(broken["import_errors"]) == ["broken_syntax.py", "imports_ray.py"]
    assert "SyntaxError" in broken["import_errors"]["broken_syntax.py"]
    assert "No module named 'ray'" in broken["import_errors"]["imports_ray.py"]
    assert sorted(broken["dags"]) == ["flights_nightly"]


# ------------------------------------------------------------- tasks run on a real Ray cluster
@pytest.fixture(scope="module")
def ray_head_with_token():
    """`ray start --head` with RAY_AUTH_MODE=token on loopback ports; yields (dashboard URL, token).

    Started in its own temp dir (also the processes' working dir), so teardown kills exactly
    its processes by id; `ray stop` would stop every Ray on the machine.
    """
    _airflow_python()  # fail first, and fast, without Airflow's venv
    temp_dir = tempfile.mkdtemp(prefix="mlops_ray_af_")
    token = secrets.token_hex(16)
    dash = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               RAY_USAGE_STATS_ENABLED="0")
    cmd = [str(VENV_BIN / "ray"), "start", "--head", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=1",
           f"--object-store-memory={100 * 1024 * 1024}", f"--temp-dir={temp_dir}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
           f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120, cwd=temp_dir)
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 60
        while True:
            req = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Ray dashboard at {url} did not answer within 60 s")
            time.sleep(0.5)
        yield url, token
    finally:
        kill_processes_under(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _fake_project_zip(tmp_path: Path) -> Path:
    """A zip of stand-in jobs/<stage>.py: ingest records its arguments under MLOPS_RAY_HOME, validate fails
    (exit code 3), preprocess outlasts any timeout, tune succeeds."""
    ingest = '''import json, os, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(os.environ["MLOPS_RAY_HOME"]) / "runs" / args[args.index("--run-id") + 1] / "ingest.json"
out.parent.mkdir(parents=True, exist_ok=True)
with out.open("a") as f:
    f.write(json.dumps({"argv": args, "auth_mode": os.environ.get("RAY_AUTH_MODE")}) + "\\n")
print("ingest: wrote", out)
'''
    jobs = {"ingest": ingest,
            "validate": 'import sys\nprint("validate: planted failure, exit code 3")\nsys.exit(3)\n',
            "preprocess": 'import time\nprint("preprocess: runs past the timeout")\ntime.sleep(120)\n',
            "tune": 'print("tune: done")\n'}
    path = tmp_path / "project.zip"
    with zipfile.ZipFile(path, "w") as zf:  # one top-level folder, as Ray expects of a working_dir archive
        for stage, code in jobs.items():
            zf.writestr(f"project/jobs/{stage}.py", code)
    return path


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_stage_tasks_submit_real_ray_jobs_succeed_fail_and_authenticate(ray_head_with_token, tmp_path):
    url, token = ray_head_with_token
    home = tmp_path / "home"
    dag_file = write_airflow_dag(
        tmp_path / "dags" / "dag.py", **{**EXAMPLE_ARGS, "ray_address": url, "mlops_ray_home": str(home),
                                         "working_dir": _fake_project_zip(tmp_path).as_uri(),
                                         "ray_auth_token_env": "MLOPS_TEST_RAY_TOKEN", "poll_interval_s": 0.25})
    out = tmp_path / "tasks.json"

    _run_in_airflow([str(HERE / "airflow_task_check.py"), str(dag_file), str(out)], tmp_path, timeout_s=150,
                    TEST_RAY_TOKEN=token)
    r = json.loads(out.read_text())

    run_id = r["run_id"]
    assert run_id.startswith("airflow-mlops_ray_flights-manual__2026-11-29T12-00-00-123456-00-00-")
    assert r["entrypoint"] == "python jobs/ingest.py --config mlops_ray/configs/flights.yaml --run-id RID"
    assert r["runtime_env"] == {"env_vars": {"MLOPS_RAY_HOME": str(home), "RAY_AUTH_MODE": "token"},
                                "working_dir": (tmp_path / "project.zip").as_uri()}
    # ingest: token from the environment variable; the job ran in the downloaded project with the run id
    assert r["ingest"]["ok"], r["ingest"]
    assert r["ingest"]["result"] == {"stage": "ingest", "run_id": run_id, "submission_id": f"{run_id}-ingest-try1",
                                     "status": "SUCCEEDED"}
    records = [json.loads(line) for line in (home / "runs" / run_id / "ingest.json").read_text().splitlines()]
    assert records == [{"argv": ["--config", "mlops_ray/configs/flights.yaml", "--run-id", run_id],
                        "auth_mode": "token"}]  # once: the repeated try attached to the same job
    assert r["ingest_again"]["ok"] and r["ingest_again"]["result"] == r["ingest"]["result"]
    # validate: token from the Airflow Variable; the job failed, the task error carries its message and log tail
    assert not r["validate"]["ok"]
    err = r["validate"]["error"]
    assert f"Ray job {run_id}-validate-try1 ended FAILED" in err and "exit code 3" in err
    assert "last 4000 characters of its logs" in err and "validate: planted failure, exit code 3" in err
    # no token / a wrong token: refused before or by Ray, with the way to fix it
    assert not r["no_token"]["ok"] and "neither the environment variable MLOPS_TEST_RAY_TOKEN nor the Airflow " \
        "Variable MLOPS_TEST_RAY_TOKEN is set" in r["no_token"]["error"]
    assert not r["wrong_token"]["ok"] and "HTTP 403" in r["wrong_token"]["error"] \
        and "check the token in MLOPS_TEST_RAY_TOKEN" in r["wrong_token"]["error"]

    # execution_timeout (Airflow's own signal-based timeout) interrupts the wait: the Ray job is stopped
    assert r["timeout"]["raised"] == "AirflowTaskTimeout" and r["timeout"]["seconds"] < 30
    # a retry stops the job an earlier try left running, then runs its own
    assert r["tune_retry"]["ok"] and r["tune_retry"]["result"]["submission_id"] == f"{run_id}-tune-try2"

    assert r["jobs"] == _ray_jobs(url, token) == {
        f"{run_id}-ingest-try1": "SUCCEEDED", f"{run_id}-validate-try1": "FAILED",
        f"{run_id}-preprocess-try1": "STOPPED", f"{run_id}-tune-try1": "STOPPED", f"{run_id}-tune-try2": "SUCCEEDED"}


def _ray_jobs(url: str, token: str) -> dict[str, str]:
    """Submission id -> status of every submitted job on the cluster (GET /api/jobs/)."""
    req = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return {j["submission_id"]: j["status"] for j in json.loads(resp.read()) if j.get("submission_id")}


if __name__ == "__main__":  # regenerate the committed example
    print(write_airflow_dag(EXAMPLE, **EXAMPLE_ARGS))
