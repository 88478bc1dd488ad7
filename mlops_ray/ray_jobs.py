"""Ray Jobs: the entry point that runs inside a job, and the client that submits jobs.

Inside a job (``jobs/<stage>.py`` or ``python -m mlops_ray.ray_jobs <stage>``), :func:`job_main`
runs one stage or the whole pipeline against the cluster the job was submitted to. Stages
of one run hand data to each other through the run record in ``MLOPS_RAY_HOME`` (shared
storage on a cluster), so each stage can be its own job: pass the same ``--run-id``.

Outside, :func:`submit` wraps Ray's ``JobSubmissionClient``: it copies the resolved config to
``$MLOPS_RAY_HOME/submissions/<submission_id>/config.yaml`` (so the job reads it from shared
storage, whatever the working directory), uploads the project checkout as the working
directory when there is one, and passes ``MLOPS_RAY_HOME`` in the runtime environment.
Ray token authentication: with ``RAY_AUTH_MODE=token`` and the token in ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, Ray's client sends ``Authorization: Bearer``
(https://docs.ray.io/en/latest/ray-security/token-auth.html); setting either token variable
alone turns the mode on here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_ray.errors import ConfigError, MlopsRayError, StageError
from mlops_ray.home import ENV_VAR, Home
from mlops_ray.pipeline import STAGES, plan

if TYPE_CHECKING:  # pragma: no cover
    from ray.job_submission import JobSubmissionClient

    from mlops_ray.config import Config

logger = logging.getLogger(__name__)

STAGE_TARGETS = STAGES
TARGETS = ("pipeline", *STAGE_TARGETS)
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


# ----------------------------------------------------------------- inside a job
def job_main(target: str, argv: list[str] | None = None) -> int:
    """Run ``target`` (``pipeline`` or one stage) inside a Ray job; returns the process exit code.

    Exit codes follow the CLI: 0 success, 1 a stage failed (message with the resume
    command), 2 a usage or config error.
    """
    from mlops_ray.config import load_config
    from mlops_ray.pipeline import run_pipeline
    from mlops_ray.sessions import Sessions

    if target not in TARGETS:
        print(f"unknown job target '{target}'; expected one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"jobs/{target}.py",
                                     description=f"Run {'the pipeline' if target == 'pipeline' else 'stage ' + target} "
                                                 "inside a Ray job.")
    parser.add_argument("--config", default=None, help="pipeline YAML (default: the bundled flights config)")
    parser.add_argument("--run-id", default=None, help="run record to continue (stages of one run share it)")
    if target == "pipeline":
        parser.add_argument("--from-stage", default=None, help="resume the run from this stage")
        parser.add_argument("--to-stage", default=None, help="stop after this stage")
    if target == "tune":
        parser.add_argument("--resume", action="store_true",
                            help="continue the interrupted experiment of this config and data (an error if none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ENV_VAR not in os.environ:
        logger.warning("%s is not set: state goes to %s/.mlops_ray inside the job's temporary working dir. Pass "
                       "--runtime-env-json '{\"env_vars\": {\"%s\": \"/shared/path\"}}' or use `mlops-ray submit`.",
                       ENV_VAR, os.getcwd(), ENV_VAR)
    try:
        cfg = load_config(args.config)
        if target != "pipeline" and target != "ingest" and not args.run_id:
            raise ConfigError(f"stage '{target}' reads the outputs of earlier stages from a run record; "
                              "pass --run-id ID of the run that ran them.")
        with Sessions(cfg.engines, extra_jars=cfg.ingest.spark_jars()) as sessions:
            record = run_pipeline(
                cfg, sessions=sessions, run_id=args.run_id,
                from_stage=getattr(args, "from_stage", None), to_stage=getattr(args, "to_stage", None),
                only=None if target == "pipeline" else (target,), config_path=args.config,
                stage_options={"tune": {"resume": bool(getattr(args, "resume", False))}})
    except StageError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except MlopsRayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done = ", ".join(f"{s}={'cached' if e.get('cached') else e['status']}" for s, e in record["stages"].items())
    print(f"run {record['run_id']}: {record['status']} ({done})")
    return 0


# ---------------------------------------------------------------- submission
def project_checkout() -> Path | None:
    """The source checkout this package runs from (it has ``jobs/``), or None for an installed package."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "jobs" / "pipeline.py").is_file() and (root / "pyproject.toml").is_file() else None


def job_client(address: str | None = None) -> "JobSubmissionClient":
    """Ray's ``JobSubmissionClient`` for ``address`` (dashboard URL, ``host:port`` or ``auto``).

    An explicit address wins over ``RAY_ADDRESS`` (Ray's client lets the variable win, which
    would make ``--address`` silently useless).

    Raises:
        ConfigError: no cluster answers at the address (names it and how to start one).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    if address:
        os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise ConfigError(f"the Ray cluster refused the request: {exc} Set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) "
                          "to the cluster's token.") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        shown = address or os.environ.get("RAY_ADDRESS") or "a local cluster (auto)"
        raise ConfigError(f"no Ray cluster answered at {shown}: {exc}. Start one with `ray start --head` "
                          "or pass --address http://<head>:8265 (or set RAY_ADDRESS).") from None
    finally:
        if address:
            if saved is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = saved


def check_submission(target: str, run_id: str | None, from_stage: str | None, to_stage: str | None) -> None:
    """Refuse a submission the job would reject anyway, before anything reaches the cluster.

    Raises:
        ConfigError: an unknown target or stage, a stage or resume without ``run_id``, or resume
            options on a single-stage job.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown submit target '{target}'; expected 'pipeline', one of the stages "
                          f"({', '.join(STAGE_TARGETS)}) or status/logs/stop.")
    if target not in ("pipeline", "ingest") and not run_id:
        raise ConfigError(f"stage '{target}' needs --run-id: it reads the earlier stages' outputs from that run.")
    if target != "pipeline" and (from_stage or to_stage):
        raise ConfigError("--from-stage/--to-stage apply to 'pipeline' only; a stage job runs exactly that stage.")
    plan(from_stage, to_stage)  # bad stage names fail here, not inside the cluster
    if from_stage and from_stage != STAGES[0] and not run_id:
        raise ConfigError(f"--from-stage {from_stage} resumes a run: pass --run-id ID of the run whose earlier "
                          "stages it continues (see `mlops-ray runs list`).")


@dataclass(frozen=True)
class SubmittedJob:
    """A job handed to Ray.

    Attributes:
        submission_id: Ray's id of the job (use with status/logs/stop).
        entrypoint: the command the job runs.
        config_path: the resolved config the job reads (under MLOPS_RAY_HOME).
        run_id: the run record the job writes (None: the pipeline picks a new one and prints it).
    """

    submission_id: str
    entrypoint: str
    config_path: str
    run_id: str | None


def submit(client: "JobSubmissionClient", target: str, cfg: "Config", home: Home, *, run_id: str | None = None,
           from_stage: str | None = None, to_stage: str | None = None, working_dir: Path | None = None,
           entrypoint_num_cpus: float | None = None, env_vars: dict[str, str] | None = None) -> SubmittedJob:
    """Submit ``target`` (``pipeline`` or a stage) as a Ray job.

    Args:
        client: from :func:`job_client`.
        target: ``pipeline`` or a stage name.
        cfg: the validated config; written, resolved, next to the run state.
        home: MLOPS_RAY_HOME; must be storage the cluster's nodes share with this machine.
        run_id: run record to continue or create (required for stages after ``ingest``).
        working_dir: folder uploaded as the job's working dir; None = this project checkout if
            there is one, else nothing (the cluster's image must have mlops_ray installed).
        entrypoint_num_cpus: CPUs reserved for the job's driver (None: Ray's default, 0).
        env_vars: more environment variables for the job.

    Raises:
        ConfigError: an unknown target, a stage without ``run_id``, or a resume option on a stage.
    """
    from mlops_ray.config import config_to_yaml

    check_submission(target, run_id, from_stage, to_stage)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    submission_id = f"mlops-ray-{target}-{stamp}-{uuid.uuid4().hex[:6]}"
    cfg_dir = home.root / "submissions" / submission_id
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = cfg_dir / "config.yaml"
    cfg_path.write_text(config_to_yaml(cfg))
    wd = working_dir if working_dir is not None else project_checkout()
    script = f"jobs/{target}.py" if wd is not None and (wd / "jobs" / f"{target}.py").is_file() else None
    args = [f"--config {cfg_path}"] + ([f"--run-id {run_id}"] if run_id else []) + \
        ([f"--from-stage {from_stage}"] if from_stage else []) + ([f"--to-stage {to_stage}"] if to_stage else [])
    entrypoint = " ".join([f"python {script}" if script else f"python -m mlops_ray.ray_jobs {target}", *args])
    runtime_env: dict[str, Any] = {"env_vars": {ENV_VAR: str(home.root), **(env_vars or {})}}
    if wd is not None:
        runtime_env["working_dir"] = str(wd)
        runtime_env["excludes"] = [".venv*", ".mlops_ray", "**/__pycache__", ".git"]
    client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                      entrypoint_num_cpus=entrypoint_num_cpus,
                      metadata={"mlops_ray_target": target, "mlops_ray_run_id": run_id or ""})
    logger.info("submitted %s as %s: %s", target, submission_id, entrypoint)
    return SubmittedJob(submission_id, entrypoint, str(cfg_path), run_id)


def wait_for_job(client: "JobSubmissionClient", submission_id: str, *, on_logs: Callable[[str], None] | None = None,
                 poll_s: float = 2.0, timeout_s: float | None = None) -> str:
    """Poll until the job ends; stream new log text to ``on_logs``; return the final status name.

    Raises:
        TimeoutError: the job is still running after ``timeout_s`` seconds (it keeps running).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        if on_logs is not None:
            logs = client.get_job_logs(submission_id)
            if len(logs) > shown:
                on_logs(logs[shown:])
                shown = len(logs)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {submission_id} still {status} after {timeout_s:.0f} s; it keeps running. "
                               f"Follow it with `mlops-ray submit logs {submission_id}`, "
                               f"stop it with `mlops-ray submit stop {submission_id}`.")
        time.sleep(poll_s)


def job_summary(client: "JobSubmissionClient", submission_id: str) -> dict[str, Any]:
    """Status, message, entrypoint, start/end times of one job (Ray's ``JobDetails``)."""
    info = client.get_job_info(submission_id)
    return {"submission_id": submission_id, "status": str(info.status.value), "message": info.message,
            "entrypoint": info.entrypoint, "start_time_ms": info.start_time, "end_time_ms": info.end_time,
            "metadata": info.metadata or {}}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(f"usage: python -m mlops_ray.ray_jobs {{{'|'.join(TARGETS)}}} [--config PATH] [--run-id ID]",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(job_main(sys.argv[1], sys.argv[2:]))
