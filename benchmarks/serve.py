"""Serving cost, side by side in one run: where the time of a prediction goes.

Five paths, each at 1 and at 16 concurrent HTTP clients (a thread pool, one ``requests.Session``
per client, a fixed duration per cell):

(a) in-process: ``ServedModel.predict_proba`` (feature derivation from the feature spec + the
    estimator) on one record, no HTTP, no Serve;
(b) a Ray Serve no-op deployment behind the same HTTP proxy (reads the body, answers a constant):
    the floor that Serve's proxy and routing put under every request;
(c) ``POST /v1/predict`` of the real model server, one record per request;
(d) the same with request batching (``deploy.batching``, Ray Serve's ``@serve.batch``) on;
(e) ``POST /v1/predict`` with 32 records per request.

The model comes from a quick real pipeline run (4 % sample of the flights, 2 trials, through
``register``) in a home kept between runs (``$SERVE_BENCH_HOME``, default a folder under the
system temp dir), so a second run finds every stage cached; the benchmark trains nothing of its
own. Goals (2-core machine): (c) - (b) <= 5 ms at p50 with 1 client; (d) records/s >= (c)
records/s at 16 clients; (e) records/s >= 10 x (c) records/s at 16 clients.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

NAME = "serve"
DESCRIPTION = ("Serving latency and throughput: in-process predict, Serve no-op, /v1/predict with 1 record "
               "(unbatched, @serve.batch) and 32 records per request, at 1 and 16 clients")

#: Seconds each (path, clients) cell sends requests for (after a short warm-up).
CELL_S = float(os.environ.get("SERVE_BENCH_CELL_S", "8"))
WARMUP_S = 1.5
CLIENTS = (1, 16)
BIG_BATCH = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(serve_port: int, metrics_port: int):
    """The quick run's config: 4 % sample, one trial per family (2 trials), loopback ports (as the tests' run)."""
    from mlops_ray.config import config_from_mapping

    return config_from_mapping({
        "engines": {"spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g"},
                    "ray": {"num_cpus": 2, "include_dashboard": False, "metrics_export_port": metrics_port,
                            "object_store_memory_bytes": 300 * 1024 * 1024}},
        "ingest": {"sample_fraction": 0.04},
        "tune": {"num_samples": 1,
                 "search_space": {
                     "logistic_regression": {"C": {"distribution": "fixed", "value": 1.0}},
                     "hist_gradient_boosting": {"learning_rate": {"distribution": "fixed", "value": 0.1},
                                                "max_leaf_nodes": {"distribution": "fixed", "value": 31},
                                                "max_iter": {"distribution": "fixed", "value": 100}}}},
        "deploy": {"port": serve_port, "num_cpus_per_replica": 0.25, "max_records": 1000,
                   "autoscaling": {"min_replicas": 1, "max_replicas": 1}},
    })


def bench_home():
    """The benchmark's MLOPS_RAY_HOME (kept between runs so the quick pipeline run is cached)."""
    from mlops_ray.home import Home

    root = os.environ.get("SERVE_BENCH_HOME") or os.path.join(tempfile.gettempdir(), "mlops_ray_bench_serve_home")
    return Home.resolve(root).ensure()


def quick_model(cfg, home, sessions) -> dict:
    """Run (or find cached) the 4 % sample pipeline through ``register``; its run record."""
    from mlops_ray.pipeline import run_pipeline

    return run_pipeline(cfg, sessions=sessions, home=home, to_stage="register")


def _real_records(run_record: dict, n: int = 2000) -> list[dict]:
    """Real test-split flights of the quick run as API records (input columns, nulls left out)."""
    import pandas as pd

    from mlops_ray.preprocess.derive import INPUT_SCHEMA

    pre = Path(run_record["stages"]["preprocess"]["outputs"]["path"])
    df = pd.read_parquet(pre / "data" / "test")
    df = df.sample(n=min(n, len(df)), random_state=0)
    return [{k: v for k, v in r.items() if v is not None}
            for r in json.loads(df[list(INPUT_SCHEMA)].to_json(orient="records"))]


def _noop_app():
    """A Ray Serve deployment that reads the body and answers a constant: Serve's proxy and routing, nothing else."""
    from ray import serve

    @serve.deployment(name="NoOp", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16,
                      logging_config={"enable_access_log": False, "log_level": "WARNING"})
    class NoOp:
        async def __call__(self, request):
            from starlette.responses import JSONResponse

            await request.body()
            return JSONResponse({"predictions": []})

    return NoOp.bind()


def _cell(send, clients: int, duration_s: float, per_request: int) -> dict:
    """``clients`` threads calling ``send(client_index, i)`` for ``duration_s`` (after WARMUP_S); latency stats."""
    stop_warm = time.monotonic() + WARMUP_S
    end = stop_warm + duration_s
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(k: int) -> None:
        i = 0
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            ok = send(k, i)
            t1 = time.monotonic()
            i += 1
            if t0 >= stop_warm:
                lat[k].append(t1 - t0)
                errors[k] += 0 if ok else 1

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    all_lat = np.array([x for xs in lat for x in xs]) * 1000.0
    n = len(all_lat)
    return {"clients": clients, "records_per_request": per_request, "requests": n, "errors": sum(errors),
            "p50_ms": round(float(np.percentile(all_lat, 50)), 3) if n else None,
            "p99_ms": round(float(np.percentile(all_lat, 99)), 3) if n else None,
            "requests_per_s": round(n / duration_s, 1), "records_per_s": round(n * per_request / duration_s, 1)}


def _http_sender(url: str, bodies: list[bytes], clients: int):
    import requests

    sessions = [requests.Session() for _ in range(clients)]
    headers = {"Content-Type": "application/json"}

    def send(k: int, i: int) -> bool:
        r = sessions[k].post(url, data=bodies[(k * 7919 + i) % len(bodies)], headers=headers, timeout=60)
        return r.status_code == 200

    return send


def run() -> dict:
    import logging

    from ray import serve

    from mlops_ray.serve import wait_ready
    from mlops_ray.serve.app import model_server
    from mlops_ray.serve.model import load_served_model
    from mlops_ray.sessions import Sessions

    logging.getLogger("ray").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    t_setup = time.monotonic()
    port = _free_port()
    cfg = _config(port, _free_port())
    home = bench_home()
    has_batching = hasattr(cfg.deploy, "batching") and _app_batches()
    results: dict = {"paths": {}, "setup": {}}
    with Sessions(cfg.engines, ray_runtime_env={"env_vars": {"MLOPS_RAY_HOME": str(home.root)}}) as sessions:
        record = quick_model(cfg, home, sessions)
        results["setup"]["pipeline_s"] = round(time.monotonic() - t_setup, 1)
        records = _real_records(record)
        uri = record["stages"]["register"]["outputs"]["uri"]  # the pinned version, models:/flights/N
        results["model_uri"] = uri
        sessions.ray()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        same = {"max_ongoing_requests": 16}
        plain = cfg.deploy.model_copy(update=same)
        apps = {"b": ("/noop", _noop_app()), "c": ("/plain", model_server(plain, cfg.register_, home, uri, None))}
        if has_batching:
            from mlops_ray.config import BatchingConfig

            batched = cfg.deploy.model_copy(update={**same, "batching": BatchingConfig(
                enabled=True, max_batch_size=16, batch_wait_timeout_s=0.005)})
            apps["d"] = ("/batched", model_server(batched, cfg.register_, home, uri, None))
        t_deploy = time.monotonic()
        for key, (prefix, app) in apps.items():
            serve.run(app, name=f"bench_{key}", route_prefix=prefix, blocking=False)
        base = f"http://127.0.0.1:{port}"
        for key, (prefix, _) in apps.items():
            if key != "b":
                wait_ready(base + prefix, 300)
        results["setup"]["deploy_s"] = round(time.monotonic() - t_deploy, 1)

        one = [json.dumps({"records": [r]}).encode() for r in records]
        many = [json.dumps({"records": [records[(i + j) % len(records)] for j in range(BIG_BATCH)]}).encode()
                for i in range(0, len(records), BIG_BATCH)]
        served = load_served_model(cfg.register_, home, uri, tempfile.mkdtemp(prefix="mlops_ray_bench_"))
        served.predict_proba(records[:8])  # warm

        def in_process(k: int, i: int) -> bool:
            served.predict_proba([records[(k * 7919 + i) % len(records)]])
            return True

        paths = {
            "a": ("in-process predict_proba (feature transform + model), 1 record", lambda c: in_process, 1),
            "b": ("Ray Serve no-op deployment, same HTTP proxy", lambda c: _http_sender(f"{base}/noop", one, c), 1),
            "c": ("/v1/predict, 1 record per request", lambda c: _http_sender(f"{base}/plain/v1/predict", one, c), 1),
            "d": ("/v1/predict, 1 record per request, @serve.batch on (max 16, wait 5 ms)",
                  lambda c: _http_sender(f"{base}/batched/v1/predict", one, c), 1),
            "e": (f"/v1/predict, {BIG_BATCH} records per request",
                  lambda c: _http_sender(f"{base}/plain/v1/predict", many, c), BIG_BATCH),
        }
        for key, (label, make, per) in paths.items():
            if key == "d" and "d" not in apps:
                results["paths"][key] = {"label": label, "cells": {}, "not_measured":
                                         "deploy.batching is not in this checkout's serving code"}
                continue
            cells = {}
            for c in CLIENTS:
                cells[str(c)] = _cell(make(c), c, CELL_S, per)
                print(f"   {key} {c:>2} clients: {cells[str(c)]}", flush=True)
            results["paths"][key] = {"label": label, "cells": cells}
        if "d" in apps:
            import requests

            results["batching_stats"] = requests.get(f"{base}/batched/v1/model", timeout=10).json().get("batching")
        for key in apps:
            serve.delete(f"bench_{key}")
        serve.shutdown()
    results["load_average"] = {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]}
    results["cell_s"] = CELL_S
    results["max_ongoing_requests"] = 16
    return {"results": results, "goals": _goals(results), "table": _table(results)}


def _app_batches() -> bool:
    """Whether the serving code has the batching path (``@serve.batch`` driven by ``deploy.batching`` in app.py)."""
    import inspect

    from mlops_ray.serve import app

    src = inspect.getsource(app)
    return "serve.batch" in src and "batching" in src


def _get(results: dict, key: str, clients: int, field: str):
    return results["paths"].get(key, {}).get("cells", {}).get(str(clients), {}).get(field)


def _goals(results: dict) -> list[dict]:
    b50, c50 = _get(results, "b", 1, "p50_ms"), _get(results, "c", 1, "p50_ms")
    c16, d16, e16 = (_get(results, k, 16, "records_per_s") for k in ("c", "d", "e"))
    gap = None if b50 is None or c50 is None else round(c50 - b50, 2)
    return [
        {"goal": "(c) /v1/predict minus (b) Serve no-op, p50 at 1 client (ms)", "target": "<= 5",
         "value": gap, "met": gap is not None and gap <= 5},
        {"goal": "(d) @serve.batch records/s over (c) unbatched records/s, 16 clients", "target": ">= 1",
         "value": round(d16 / c16, 2) if d16 and c16 else "not measured (no batching path)" if d16 is None else 0,
         "met": bool(d16 and c16 and d16 >= c16)},
        {"goal": f"(e) {BIG_BATCH} records per request, records/s over (c), 16 clients", "target": ">= 10",
         "value": round(e16 / c16, 2) if e16 and c16 else None, "met": bool(e16 and c16 and e16 >= 10 * c16)},
    ]


def _table(results: dict) -> list[str]:
    lines = ["| path | clients | p50 ms | p99 ms | requests/s | records/s | errors |", "|---|---|---|---|---|---|---|"]
    for key, p in results["paths"].items():
        if p.get("not_measured"):
            lines.append(f"| ({key}) {p['label']} | - | not measured: {p['not_measured']} | | | | |")
            continue
        for c, cell in p["cells"].items():
            lines.append(f"| ({key}) {p['label']} | {c} | {cell['p50_ms']} | {cell['p99_ms']} | "
                         f"{cell['requests_per_s']} | {cell['records_per_s']} | {cell['errors']} |")
    la = results["load_average"]
    lines += ["", f"Load average (1/5/15 min) before {la['before']}, after {la['after']} (a shared 2-core machine: "
                  "client threads, the proxy and the replicas share the same cores)."]
    return lines


if __name__ == "__main__":  # development aid: obtain the model only
    import logging

    from mlops_ray.sessions import Sessions

    logging.basicConfig(level=logging.WARNING)
    c = _config(_free_port(), _free_port())
    h = bench_home()
    with Sessions(c.engines) as s:
        rec = quick_model(c, h, s)
    print(h.root, rec["status"], json.dumps({k: v.get("status") for k, v in rec["stages"].items()}))
