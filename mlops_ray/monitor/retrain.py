"""Retrain trigger: drift or accuracy alerts (Alertmanager's webhook) or `mlops-ray retrain` submit the pipeline.

The pipeline goes to the Ray cluster as a job through ``JobSubmissionClient``
(:func:`mlops_ray.ray_jobs.submit`). A cooldown (``monitor.retrain_cooldown_s``) keeps repeated
alerts from starting repeated jobs: the last submission is recorded in
``$MLOPS_RAY_HOME/monitor/retrain.json`` under a file lock, so it holds across processes and
webhook replicas sharing the home.

Webhook payload: Alertmanager's (https://prometheus.io/docs/alerting/latest/configuration/#webhook_config),
``{"version": "4", "status": "firing"|"resolved", "alerts": [{"status", "labels": {"alertname", ...},
"annotations", "startsAt", ...}], ...}``. Only alerts with ``status: firing`` and an ``alertname`` in
``monitor.retrain_on_alerts`` count.
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from mlops_ray.config import Config
from mlops_ray.home import Home

logger = logging.getLogger(__name__)


class _Alert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AlertmanagerPayload(BaseModel):
    """The part of Alertmanager's webhook body the trigger reads (other keys are allowed and ignored)."""

    model_config = ConfigDict(extra="allow")
    version: str = "4"
    status: str
    alerts: list[_Alert]


@dataclass(frozen=True)
class RetrainDecision:
    """What the trigger did: ``submitted`` with the job's ``submission_id``, or why not."""

    submitted: bool
    reason: str
    submission_id: str | None = None
    retry_after_s: float | None = None
    alerts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "alerts": list(self.alerts)}


class RetrainTrigger:
    """Submits the pipeline as a Ray job, at most once per cooldown.

    Args:
        cfg: the pipeline config (submitted with the job; ``monitor`` gives the cooldown and alert names).
        home: MLOPS_RAY_HOME, shared with the cluster.
        address: Ray dashboard/Jobs address (``http://head:8265``); None = ``RAY_ADDRESS``.
        submit_job: ``(cfg, home, address) -> submission_id``; default submits through
            :func:`mlops_ray.ray_jobs.submit`.
    """

    def __init__(self, cfg: Config, home: Home, address: str | None = None,
                 submit_job: Callable[[Config, Home, str | None], str] | None = None):
        self.cfg = cfg
        self.home = home
        self.address = address
        self.submit_job = submit_job or _submit_pipeline

    @property
    def state_path(self) -> Path:
        return self.home.root / "monitor" / "retrain.json"

    def trigger(self, reason: str, force: bool = False, alerts: tuple[str, ...] = (),
                now: float | None = None) -> RetrainDecision:
        """Submit now unless the last submission is younger than the cooldown (``force`` ignores it)."""
        now = time.time() if now is None else now
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.state_path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            last = json.loads(self.state_path.read_text()) if self.state_path.exists() else None
            cooldown = self.cfg.monitor.retrain_cooldown_s
            if last and not force and now - last["submitted_at"] < cooldown:
                wait = cooldown - (now - last["submitted_at"])
                return RetrainDecision(False, f"cooldown: {last['submission_id']} was submitted "
                                              f"{now - last['submitted_at']:.0f} s ago (monitor.retrain_cooldown_s = "
                                              f"{cooldown:g}); not submitting again", retry_after_s=round(wait, 1),
                                       alerts=alerts)
            sid = self.submit_job(self.cfg, self.home, self.address)
            self.state_path.write_text(json.dumps({"submitted_at": now, "submission_id": sid, "reason": reason,
                                                   "alerts": list(alerts)}))
        logger.info("retrain: submitted %s (%s)", sid, reason)
        return RetrainDecision(True, reason, submission_id=sid, alerts=alerts)

    def on_alerts(self, payload: AlertmanagerPayload) -> RetrainDecision:
        """Decide on one Alertmanager webhook call."""
        wanted = set(self.cfg.monitor.retrain_on_alerts)
        firing = tuple(sorted({a.labels.get("alertname", "") for a in payload.alerts
                               if a.status == "firing" and a.labels.get("alertname") in wanted}))
        if not firing:
            names = sorted({f"{a.labels.get('alertname', '?')} ({a.status})" for a in payload.alerts})
            return RetrainDecision(False, f"no firing alert among {sorted(wanted)} (monitor.retrain_on_alerts); "
                                          f"got {names}")
        return self.trigger(f"alerts firing: {', '.join(firing)}", alerts=firing)


def _submit_pipeline(cfg: Config, home: Home, address: str | None) -> str:
    from mlops_ray.ray_jobs import job_client, submit

    return submit(job_client(address), "pipeline", cfg, home).submission_id


def webhook_app(trigger: RetrainTrigger):
    """A FastAPI app: ``POST /alerts`` (Alertmanager webhook) -> 202 submitted / 200 not submitted; ``GET /healthz``.

    A body that is not an Alertmanager payload is a 422 naming the field; a submission that
    fails (cluster unreachable) is a 503 with the reason, so Alertmanager retries it.
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    app = FastAPI(title="mlops_ray retrain trigger")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/alerts")
    def alerts(payload: AlertmanagerPayload):
        try:
            decision = trigger.on_alerts(payload)
        except Exception as e:  # noqa: BLE001 - reported to Alertmanager, which retries
            logger.exception("retrain submission failed")
            raise HTTPException(status_code=503, detail=f"submission failed: {type(e).__name__}: {e}") from e
        return JSONResponse(decision.to_dict(), status_code=202 if decision.submitted else 200)

    return app
