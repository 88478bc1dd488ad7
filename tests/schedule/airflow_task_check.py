"""Run by Airflow's own venv (.venv-airflow/bin/python), not by pytest: execute the stage tasks
of a generated DAG file against a real Ray cluster and write what happened as JSON.

    python airflow_task_check.py DAG_FILE OUT.json

Each stage task's own callable (the DAG's ``ray_stage`` function, as Airflow's operator holds
it) is called the way the operator's ``execute`` calls it: its arguments picked out of a task
context by ``determine_kwargs`` (``dag_run``, ``ti``). The code under test is what an Airflow
worker runs; the scheduler, the API server and XCom around it are absent.
The token for the cluster is given the two ways the DAG reads it: the worker's environment
variable, then the Airflow Variable (``AIRFLOW_VAR_<NAME>``), and then not at all. Airflow's own
execution-timeout context manager interrupts one task, as a worker does at execution_timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from airflow.exceptions import AirflowException
from airflow.sdk.exceptions import AirflowTaskTimeout
from airflow.sdk.execution_time.timeout import timeout


def _load(path: str):
    spec = importlib.util.spec_from_file_location("generated_mlops_ray_dag", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(module, stage: str, dag_run, try_number: int) -> dict:
    op = module.dag.get_task(stage)
    # what Airflow's PythonOperator.execute does: pick the callable's arguments out of the task context
    context = {"dag_run": dag_run, "ti": SimpleNamespace(try_number=try_number), "run_id": dag_run.run_id,
               "ds": "2026-11-29", "params": {}, "task": op}
    kwargs = op.determine_kwargs(context)
    assert sorted(kwargs) == ["dag_run", "ti"], sorted(kwargs)
    t0 = time.monotonic()
    try:
        result = op.python_callable(*op.op_args, **kwargs)
        return {"ok": True, "result": result, "seconds": time.monotonic() - t0}
    except AirflowException as exc:
        return {"ok": False, "error": str(exc), "seconds": time.monotonic() - t0}


if __name__ == "__main__":
    dag_file, out = sys.argv[1:]
    module = _load(dag_file)
    token_env, token = module.RAY_AUTH_TOKEN_ENV, os.environ.pop("TEST_RAY_TOKEN")
    dag_run = SimpleNamespace(dag_id=module.DAG_ID, run_id="manual__2026-11-29T12:00:00.123456+00:00")
    report = {"run_id": module.mlops_run_id(dag_run.dag_id, dag_run.run_id),
              "entrypoint": module.stage_entrypoint("ingest", "RID"), "runtime_env": module.stage_runtime_env()}

    os.environ[token_env] = token                          # 1. the worker's environment variable
    report["ingest"] = _run(module, "ingest", dag_run, try_number=1)
    report["ingest_again"] = _run(module, "ingest", dag_run, try_number=1)  # same try: attaches, no 2nd job
    del os.environ[token_env]
    os.environ[f"AIRFLOW_VAR_{token_env}"] = token         # 2. an Airflow Variable
    report["validate"] = _run(module, "validate", dag_run, try_number=1)
    del os.environ[f"AIRFLOW_VAR_{token_env}"]
    report["no_token"] = _run(module, "validate", dag_run, try_number=2)  # 3. no token anywhere
    os.environ[token_env] = "not-the-token"
    report["wrong_token"] = _run(module, "validate", dag_run, try_number=2)
    os.environ[token_env] = token
    headers = module.ray_auth_headers()

    # execution_timeout: Airflow's timeout interrupts the wait; the task asks Ray to stop the job
    t0 = time.monotonic()
    try:
        with timeout(2):
            report["timeout"] = _run(module, "preprocess", dag_run, try_number=1)
    except AirflowTaskTimeout as exc:
        report["timeout"] = {"raised": type(exc).__name__, "seconds": time.monotonic() - t0}

    # a retry first stops the job an earlier try left running
    stale = module.submission_id(dag_run.dag_id, dag_run.run_id, "tune", 1)
    module._ray_api("POST", "/api/jobs/", {"entrypoint": "sleep 120", "submission_id": stale, "runtime_env": {}},
                    headers=headers)
    report["tune_retry"] = _run(module, "tune", dag_run, try_number=2)

    deadline = time.monotonic() + 30
    while True:
        jobs = json.loads(module._ray_api("GET", "/api/jobs/", headers=headers)[1])
        report["jobs"] = {j["submission_id"]: j["status"] for j in jobs if j.get("submission_id")}
        if set(report["jobs"].values()) <= module.TERMINAL_STATUSES or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    Path(out).write_text(json.dumps(report, indent=1, default=str))
