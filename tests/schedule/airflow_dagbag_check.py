"""Run by Airflow's own venv (.venv-airflow/bin/python), not by pytest: load DAG folders with
Airflow's DagBag, the parser the scheduler's DAG processor uses, and write what it found as JSON.

    python airflow_dagbag_check.py OUT.json FOLDER [FOLDER ...]

Per folder: import errors (file name -> message), warnings Airflow captured while parsing, and
per DAG its schedule summary and tasks (ids, upstream/downstream ids, retry settings, timeout).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag


def _seconds(td):
    return None if td is None else td.total_seconds()


def folder_report(folder: str) -> dict:
    bag = DagBag(dag_folder=folder)
    return {
        "import_errors": {Path(k).name: v for k, v in bag.import_errors.items()},
        "warnings": {Path(k).name: list(v) for k, v in bag.captured_warnings.items()},
        "dags": {
            dag_id: {
                "schedule": dag.schedule,
                "catchup": dag.catchup,
                "max_active_runs": dag.max_active_runs,
                "tasks": [{"task_id": t.task_id, "upstream": sorted(t.upstream_task_ids),
                           "downstream": sorted(t.downstream_task_ids), "retries": t.retries,
                           "retry_delay_s": _seconds(t.retry_delay),
                           "retry_exponential_backoff": t.retry_exponential_backoff,
                           "execution_timeout_s": _seconds(t.execution_timeout)} for t in dag.tasks],
            }
            for dag_id, dag in bag.dags.items()
        },
    }


if __name__ == "__main__":
    out, *folders = sys.argv[1:]
    Path(out).write_text(json.dumps({folder: folder_report(folder) for folder in folders}, indent=1))
