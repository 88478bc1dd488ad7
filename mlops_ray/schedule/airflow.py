"""Apache Airflow DAG for the pipeline: one task per stage, each stage one Ray job.

The DAG file is rendered from the Jinja2 template ``templates/airflow_dag.py.j2`` (package
data). It imports only Airflow (``airflow.sdk``, Airflow 3) and the Python standard library,
because Airflow lives in its own virtual environment (``scripts/setup_airflow.sh``): Airflow
3.3 needs ``fastapi<0.137``, which conflicts with Ray Serve.

Each task submits ``python jobs/<stage>.py --config CONFIG --run-id RUN_ID`` through Ray's
Jobs REST API (``POST /api/jobs/``, then ``GET /api/jobs/<submission_id>`` until the job
ends; Ray docs, "Ray Jobs REST API"). All tasks of one DAG run share one mlops_ray run id
(``airflow-<dag_id>-<dag run id>``), so stages pass data through the run record
``$MLOPS_RAY_HOME/runs/<run_id>/run.json`` on shared storage, never through local files.
"""

from __future__ import annotations

import ast
import logging
import math
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from mlops_ray.errors import ConfigError
from mlops_ray.pipeline import STAGES

logger = logging.getLogger(__name__)

TEMPLATE = "airflow_dag.py.j2"

#: URI schemes Ray downloads a runtime_env ``working_dir`` from (Ray's
#: ``Protocol.get_remote_protocols()``); a local path cannot go through the REST API.
RAY_REMOTE_URI_SCHEMES = frozenset({"http", "https", "s3", "gs", "azure", "abfss", "file"})

_DAG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")  # Airflow's rule for dag ids (KEY_REGEX, 250 chars)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def airflow_dag_source(*, dag_id: str, stages: Sequence[str], ray_address: str, config_path: str,
                       mlops_ray_home: str, working_dir: str | None, schedule: str | None, retries: int,
                       retry_delay_s: float, retry_exponential_backoff: float, execution_timeout_s: float | None,
                       ray_auth_token_env: str | None = None, poll_interval_s: float = 10.0) -> str:
    """Source code of an Airflow 3 DAG file that runs ``stages`` in order, each as one Ray job.

    Args:
        dag_id: Airflow DAG id: letters, digits, ``_``, ``.``, ``-``; at most 250 characters.
        stages: pipeline stages to run, one task each, chained in this order; a subsequence of
            :data:`mlops_ray.pipeline.STAGES` (``ingest`` ... ``smoke``), no repeats.
        ray_address: ``http(s)://host:port`` of the Ray head's dashboard, where the Jobs API
            listens (default port 8265).
        config_path: pipeline YAML as the Ray job sees it: relative to the job's working
            directory (e.g. ``mlops_ray/configs/flights.yaml``) or absolute on the cluster.
        mlops_ray_home: absolute path of ``MLOPS_RAY_HOME`` on storage every Ray node shares;
            passed to each job in its runtime_env ``env_vars``.
        working_dir: remote URI of the project as an archive Ray downloads into each job's
            working directory (``s3://…/mlops_ray.zip``, ``gs://…``, ``https://…``, or
            ``file:///shared/…zip`` on shared storage; Ray's REST API takes no local
            directory), or None when the cluster's nodes hold the project already and were
            started in its root (the job then runs there, ``jobs/`` included).
        schedule: Airflow schedule: a cron expression, a preset such as ``@daily``, or None
            (triggered runs only).
        retries: Airflow retries of a failed stage task (each try is a new Ray job), >= 0.
        retry_delay_s: seconds before the first retry, > 0.
        retry_exponential_backoff: Airflow 3 backoff multiplier between retries: 0 disables
            it (constant ``retry_delay_s``), 2.0 doubles the delay each try. Not a bool: in
            Airflow 3.3 ``True`` means a multiplier of 1, i.e. no backoff.
        execution_timeout_s: seconds one try of a stage may take before Airflow fails it (the
            Ray job is then stopped), > 0; None for no limit.
        ray_auth_token_env: for a cluster with ``RAY_AUTH_MODE=token``: name of the environment
            variable on the Airflow worker, or of the Airflow Variable, that holds the token; read
            when a task runs and sent as ``Authorization: Bearer <token>``. None when the cluster
            has auth disabled. The jobs get ``RAY_AUTH_MODE=token`` or ``disabled`` to match.
        poll_interval_s: seconds between two status requests while a job runs, > 0.

    Returns:
        The DAG file's Python source (it parses; it imports neither ``ray`` nor ``mlops_ray``).

    Raises:
        ConfigError: an argument is out of range; the message names it, says what is expected
            and what came.
    """
    stages = _checked_stages(stages)
    _check(bool(_DAG_ID.match(dag_id or "")), "dag_id", "letters, digits, '_', '.' or '-' (1 to 250)", dag_id)
    url = urlsplit(ray_address or "")
    _check(url.scheme in ("http", "https") and bool(url.netloc) and url.path in ("", "/") and not url.query,
           "ray_address", "the dashboard URL 'http://HOST:PORT' (Ray's Jobs API, port 8265 by default)",
           ray_address)
    _check(isinstance(config_path, str) and config_path.strip() != "" and "\n" not in config_path,
           "config_path", "a non-empty path of the pipeline YAML as the Ray job sees it", config_path)
    _check(isinstance(mlops_ray_home, str) and PurePosixPath(mlops_ray_home).is_absolute(), "mlops_ray_home",
           "an absolute path on storage every Ray node shares (e.g. /mnt/shared/mlops_ray)", mlops_ray_home)
    if working_dir is not None:
        _check(isinstance(working_dir, str) and urlsplit(working_dir).scheme in RAY_REMOTE_URI_SCHEMES,
               "working_dir", f"a remote URI Ray can download ({', '.join(sorted(RAY_REMOTE_URI_SCHEMES))}; "
               "Ray's Jobs REST API takes no local directory: upload a zip of the project) or None when the "
               "cluster's nodes were started in the project's root", working_dir)
    _check(schedule is None or (isinstance(schedule, str) and schedule.strip() != ""), "schedule",
           "a cron expression, an Airflow preset such as '@daily', or None", schedule)
    _check(_is_int(retries) and retries >= 0, "retries", "an integer >= 0", retries)
    _check(_is_number(retry_delay_s) and retry_delay_s > 0, "retry_delay_s", "a number of seconds > 0",
           retry_delay_s)
    _check(_is_number(retry_exponential_backoff) and retry_exponential_backoff >= 0, "retry_exponential_backoff",
           "a multiplier >= 0 (0 disables backoff, 2.0 doubles the delay; Airflow 3 reads True as 1, i.e. no "
           "backoff)", retry_exponential_backoff)
    _check(execution_timeout_s is None or (_is_number(execution_timeout_s) and execution_timeout_s > 0),
           "execution_timeout_s", "a number of seconds > 0, or None for no limit", execution_timeout_s)
    _check(ray_auth_token_env is None or bool(_ENV_NAME.match(ray_auth_token_env)), "ray_auth_token_env",
           "None or an environment variable name such as RAY_AUTH_TOKEN", ray_auth_token_env)
    _check(_is_number(poll_interval_s) and poll_interval_s > 0, "poll_interval_s", "a number of seconds > 0",
           poll_interval_s)

    source = _template().render(
        dag_id=dag_id, stages=stages, ray_address=ray_address.rstrip("/"), config_path=config_path,
        mlops_ray_home=mlops_ray_home, working_dir=working_dir, schedule=schedule, retries=retries,
        retry_delay_s=retry_delay_s, retry_exponential_backoff=float(retry_exponential_backoff),
        execution_timeout_s=execution_timeout_s, ray_auth_token_env=ray_auth_token_env,
        poll_interval_s=poll_interval_s)
    ast.parse(source)  # a template bug must not reach a DAG folder
    return source


def write_airflow_dag(path: str | os.PathLike, **kwargs) -> Path:
    """Render the DAG (arguments of :func:`airflow_dag_source`) and write it to ``path``; return the path.

    The file is written next to its final name and renamed into place, so Airflow's DAG
    processor never parses half a file. Parent folders are created.

    Raises:
        ConfigError: as :func:`airflow_dag_source`.
    """
    source = airflow_dag_source(**kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(source)
    os.replace(tmp, path)
    logger.info("wrote Airflow DAG %s (%d stages) to %s", kwargs.get("dag_id"), len(kwargs.get("stages", ())), path)
    return path


def _checked_stages(stages: Sequence[str]) -> tuple[str, ...]:
    """``stages`` as a tuple, checked: known names, no repeats, in pipeline order."""
    if isinstance(stages, str) or not stages:
        raise ConfigError(f"The 'stages' argument of the Airflow DAG must be a non-empty sequence of stage names "
                          f"from {', '.join(STAGES)}. Got {stages!r} instead.")
    stages = tuple(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"The 'stages' argument of the Airflow DAG has unknown stage(s) {unknown}; expected names "
                          f"from {', '.join(STAGES)}.")
    if len(set(stages)) != len(stages) or list(stages) != sorted(stages, key=STAGES.index):
        raise ConfigError(f"The 'stages' argument of the Airflow DAG must list each stage once, in pipeline order "
                          f"({', '.join(STAGES)}). Got {list(stages)} instead.")
    return stages


def _check(ok: bool, name: str, expected: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"The '{name}' argument of the Airflow DAG must be {expected}. Got {got!r} instead.")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _template():
    import jinja2

    text = resources.files("mlops_ray.schedule").joinpath("templates", TEMPLATE).read_text()
    # Not HTML: values enter the Python source only through the `py` filter (repr), never raw.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,  # noqa: S701
                             autoescape=False)
    env.filters["py"] = _py_literal
    return env.from_string(text)


def _py_literal(value: object) -> str:
    """A Python literal for a value the template embeds (str, int, float, None, tuple of str)."""
    if not isinstance(value, (str, int, float, type(None), tuple)):
        raise TypeError(f"cannot embed {type(value).__name__} in the DAG source")
    return repr(value)
