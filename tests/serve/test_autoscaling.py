"""Replica autoscaling, shown from what happened: the model server's replicas follow the load.

A second application of the real model server (the pipeline's registered model) runs in the
session's Serve with a small ``deploy.autoscaling`` (1 to 2 replicas, 1 ongoing request per
replica as the target, short delays). Concurrent clients keep requests ongoing (each waits in the
replica's batch window);
``serve.status()`` is sampled throughout, and the timeline of running replicas is in every
assertion message.

Deployed as ``run_deploy`` deploys (the model versions in the ``user_config``), a new replica loads
its model in ``reconfigure``, which Serve runs before the replica is RUNNING: no request reaches a
replica without a model, so every answer during the burst must be 200. (Loading in the background
from the constructor instead, as a ``serve run`` of a config file still does, was measured here to
answer ``503 unavailable`` to a few requests routed to a replica added by the scale-up.)
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.serve.test_http import _test_rows

pytestmark = pytest.mark.timeout(600)  # the first test of a session also waits for the pipeline_run fixture

APP, PREFIX = "autoscaling_test", "/autoscaling-test"
# look_back_period_s above Serve's 10-s default metrics_interval_s (Ray warns below it, and will refuse it; a 3-s
# window was tried and scaled down no sooner); the ongoing-request counts inside the window arrive every second
# (the push intervals set in tests/conftest.py).
AUTOSCALING = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1, "upscale_delay_s": 1.0,
               "downscale_delay_s": 2.0, "look_back_period_s": 11.0}
# Clients sending back to back: 3 keep 3 requests ongoing (2 replicas wanted). Each request waits in the replica's
# batch window (BATCHING: the batch of 4 never fills), so the load is ongoing requests, not CPU: the 2 cores stay
# free to start the added replica's process (with 6 clients scoring 50 records each as fast as they could, 2
# added replicas took 25-27 s to start here; the constructor and model load 0.2 s of it).
CLIENTS = 3
BATCHING = {"enabled": True, "max_batch_size": 4, "batch_wait_timeout_s": 0.5}


def _running(app: str = APP) -> int:
    """Running replicas of the app's ModelServer deployment, from Serve's controller."""
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or "ModelServer" not in status.deployments:
        return 0
    return status.deployments["ModelServer"].replica_states.get("RUNNING", 0)


class Timeline:
    """(seconds since start, running replicas) samples; printed as the changes only."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, int]] = []

    def sample(self) -> int:
        n = _running()
        self.samples.append((round(time.monotonic() - self.t0, 1), n))
        return n

    def until(self, cond, deadline_s: float, every_s: float = 0.5) -> bool:
        """Sample until ``cond(running)`` holds or ``deadline_s`` seconds pass; whether it held."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if cond(self.sample()):
                return True
            time.sleep(every_s)
        return cond(self.sample())

    def __str__(self) -> str:
        changes = [s for i, s in enumerate(self.samples) if i == 0 or s[1] != self.samples[i - 1][1]]
        return " -> ".join(f"{n}@{t}s" for t, n in changes) + f" (last sample {self.samples[-1][0]} s)"


def test_replicas_rise_above_the_minimum_under_load_and_return_to_it_after(pipeline_run, endpoint):
    from ray import serve

    from mlops_ray.config import AutoscalingConfig, BatchingConfig
    from mlops_ray.serve import wait_ready
    from mlops_ray.serve.app import model_server, rollout_user_config

    cfg, home, record = pipeline_run
    deploy = cfg.deploy.model_copy(update={"autoscaling": AutoscalingConfig(**AUTOSCALING),
                                           "batching": BatchingConfig(**BATCHING), "num_cpus_per_replica": 0.25})
    version = record["stages"]["register"]["outputs"]["version"]
    pinned = f"models:/flights/{version}"  # deployed as run_deploy does: the versions in the user_config
    serve.run(model_server(deploy, cfg.register_, home, pinned, "champion",
                           rollout=rollout_user_config(pinned, "champion")), name=APP, route_prefix=PREFIX,
              blocking=False)
    url = f"{endpoint}{PREFIX}"
    _, records = _test_rows(pipeline_run, 5)
    stop = threading.Event()
    answers: dict[str, int] = {}  # "200", or "503 unavailable: <message>" for error answers
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/v1/predict", json={"records": records}, timeout=60)
                key = str(r.status_code) if r.status_code == 200 else \
                    f"{r.status_code} {(r.json().get('error') or {}).get('code')}: {r.json()['error']['message']}"
                with lock:
                    answers[key] = answers.get(key, 0) + 1

    try:
        wait_ready(url, 120, expect_version=str(version))
        # the app's settings reached Serve: they are what deploy.autoscaling said
        applied = serve.status().applications[APP].deployments["ModelServer"]
        timeline = Timeline()
        # Before any load: the minimum, and it stays there (nothing else makes it grow).
        assert not timeline.until(lambda n: n != AUTOSCALING["min_replicas"], 4), f"idle: {timeline}; {applied}"

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client) for _ in range(CLIENTS)]
            try:
                rose = timeline.until(lambda n: n >= AUTOSCALING["max_replicas"], 90)
                load_s = round(time.monotonic() - timeline.t0, 1)
            finally:
                stop.set()
            for f in futures:
                f.result()
        peak = max(n for _, n in timeline.samples)
        assert rose and peak == AUTOSCALING["max_replicas"], \
            f"replicas did not rise to max_replicas={AUTOSCALING['max_replicas']} under {CLIENTS} clients: {timeline}"
        # Every answer is a prediction: a replica added by the scale-up loads its model in `reconfigure`, which
        # Serve runs before it routes requests to the replica (see the module docstring).
        assert answers.get("200", 0) > 0 and set(answers) == {"200"}, f"answers during the burst: {answers}"

        fell = timeline.until(lambda n: n == AUTOSCALING["min_replicas"], 90)
        assert fell, f"replicas did not return to min_replicas={AUTOSCALING['min_replicas']} after the load " \
                     f"stopped at {load_s} s: {timeline}"
        # Stays at the minimum while idle (did not bounce back up).
        assert not timeline.until(lambda n: n != AUTOSCALING["min_replicas"], 3), f"after the load: {timeline}"
        print(f"\nreplica timeline (load from 4 s to {load_s} s; answers {answers}): {timeline}")
    finally:
        stop.set()
        serve.delete(APP)
