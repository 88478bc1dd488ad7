"""The serving metrics as a real Prometheus scrapes them from Ray's metrics export port.

A fresh application (the session's champion under its own name and route prefix) is deployed on the session's
Ray, so its series start from zero whatever other tests sent to the shared endpoint; N real test rows are sent
one per request, then one planted invalid request. PromQL, summing away Ray's per-replica and per-worker
labels, must read exactly N (and 1 for the planted error) for Serve's built-in request counter and for every
custom metric of the contract; the same polling helper pointed at a series that is never exported, or at the
right series with a wrong count, must fail.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests.conftest import SERVE_PORT, running_prometheus

pytestmark = pytest.mark.timeout(600)

APP = "prom_metrics"
PREFIX = "/prom-metrics"
N = 12
#: Outcome of each poll: Ray exports replica metrics every few seconds, Prometheus scrapes every second.
POLL_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def prometheus(pipeline_run, tmp_path_factory):
    """A real Prometheus (Debian's) on a free loopback port scraping the session Ray's metrics port every second."""
    with running_prometheus(tmp_path_factory.mktemp("prometheus-serve"),
                            pipeline_run[0].engines.ray.metrics_export_port) as url:
        yield url


@pytest.fixture(scope="module")
def fresh_app(pipeline_run, endpoint, sessions):
    """Base URL of a fresh application serving the session's champion (its own series, counted from zero)."""
    from ray import serve

    from mlops_ray.serve import wait_ready
    from mlops_ray.serve.app import model_server

    cfg, home, _ = pipeline_run
    sessions.ray()
    serve.run(model_server(cfg.deploy, cfg.register_, home, "models:/flights/1", "champion"), name=APP,
              route_prefix=PREFIX, blocking=False)
    url = f"http://127.0.0.1:{SERVE_PORT}{PREFIX}"
    try:
        wait_ready(url, 120, expect_version="1")
        yield url
    finally:
        serve.delete(APP)


def query(prom: str, expr: str) -> list[dict]:
    """Instant PromQL query; the result vector."""
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.status_code} {r.text[:500]}"
    return r.json()["data"]["result"]


def until_value(prom: str, expr: str, want: float, timeout_s: float = POLL_TIMEOUT_S) -> float:
    """Poll the scalar ``expr`` (one series) until it equals ``want``; fail naming the query and the last answer."""
    deadline = time.monotonic() + timeout_s
    last: object = "no series"
    while True:
        result = query(prom, expr)
        if len(result) == 1:
            last = float(result[0]["value"][1])
            if last == want:
                return last
        elif result:
            last = f"{len(result)} series: {result[:3]}"
        if time.monotonic() > deadline:
            pytest.fail(f"{expr}: expected {want}, last answer {last} after {timeout_s:.0f} s")
        time.sleep(0.5)


def _records(pipeline_run, n: int) -> list[dict]:
    from mlops_ray.preprocess.derive import INPUT_SCHEMA

    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / "test").sample(n=n, random_state=7)
    return [{k: v for k, v in r.items() if v is not None}
            for r in json.loads(df[list(INPUT_SCHEMA)].to_json(orient="records"))]


def test_prometheus_counts_exactly_the_requests_sent_and_every_contract_metric(prometheus, fresh_app, pipeline_run):
    records = _records(pipeline_run, N)
    sel = f'application="{APP}"'
    post = f'{sel},method="POST"'  # readiness polls (GET /readyz) count too; the predictions are the only POSTs
    # Before anything is sent, the fresh application has no POST series at all (the counts start at zero).
    assert query(prometheus, f"sum(ray_serve_num_http_requests_total{{{post}}})") == []
    with requests.Session() as s:
        for i, rec in enumerate(records):
            r = s.post(f"{fresh_app}/v1/predict", json={"records": [rec]}, timeout=60)
            assert r.status_code == 200, r.text
        bad = s.post(f"{fresh_app}/v1/predict", json={"records": [{**records[0], "month": 13, "gate": "B7"}]},
                     timeout=60)
    assert bad.status_code == 422, bad.text
    assert {tuple(f["loc"]) for f in bad.json()["error"]["fields"]} == {("records", 0, "month"),
                                                                      ("records", 0, "gate")}

    # Serve's own request counter, by route and status: N answers 200 and the planted 422.
    until_value(prometheus, f'sum(ray_serve_num_http_requests_total{{{post},status_code="200"}})', N)
    until_value(prometheus, f'sum(ray_serve_num_http_requests_total{{{post},status_code="422"}})', 1)
    routes = {r["metric"].get("route") for r in query(prometheus, f"ray_serve_num_http_requests_total{{{post}}}")}
    assert routes and all(r.startswith(PREFIX) for r in routes), routes
    until_value(prometheus, f'sum(ray_serve_num_http_requests_total{{route=~"{PREFIX}.*",method="POST"}})', N + 1)

    # The model's metrics (../shared/CONTRACTS.md), per-replica and per-worker labels summed away.
    until_value(prometheus, f'sum(ray_mlops_predictions_total{{{sel},model_version="1"}})', N)
    by_label = {r["metric"]["label"]: float(r["value"][1])
                for r in query(prometheus, f"sum by (label) (ray_mlops_predictions_total{{{sel}}})")}
    assert set(by_label) <= {"0", "1"} and sum(by_label.values()) == N, by_label
    until_value(prometheus, f"sum(ray_mlops_prediction_score_count{{{sel}}})", N)
    until_value(prometheus, f'sum(ray_mlops_prediction_score_bucket{{{sel},le="+Inf"}})', N)
    score_sum = float(query(prometheus, f"sum(ray_mlops_prediction_score_sum{{{sel}}})")[0]["value"][1])
    assert 0 < score_sum < N  # probabilities in (0, 1)
    until_value(prometheus, f"sum(ray_mlops_inference_latency_ms_count{{{sel}}})", N)
    p50 = query(prometheus, f"histogram_quantile(0.5, sum by (le) (ray_mlops_inference_latency_ms_bucket{{{sel}}}))")
    assert p50 and 0 < float(p50[0]["value"][1]) < 2000, p50
    until_value(prometheus, f'sum(ray_mlops_request_errors_total{{{sel},code="validation_error"}})', 1)
    until_value(prometheus, f'sum(ray_mlops_validation_errors_total{{{sel},field="month"}})', 1)
    until_value(prometheus, f'sum(ray_mlops_validation_errors_total{{{sel},field="_unknown"}})', 1)
    fields = {r["metric"]["field"] for r in query(prometheus, f"ray_mlops_validation_errors_total{{{sel}}}")}
    assert fields == {"month", "_unknown"}, fields  # the client's field name "gate" never becomes a label

    # The helper can fail: a series that is never exported, and the right series with a wrong count.
    with pytest.raises(pytest.fail.Exception, match="never_exported.*expected 12"):
        until_value(prometheus, f"sum(ray_mlops_predictions_never_exported_total{{{sel}}})", N, timeout_s=3)
    with pytest.raises(pytest.fail.Exception, match=f"expected {N + 1}, last answer {float(N)}"):
        until_value(prometheus, f'sum(ray_mlops_predictions_total{{{sel},model_version="1"}})', N + 1, timeout_s=3)
