"""The Ray Serve endpoint over real HTTP: round trip, parity with Spark features, errors, metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from mlops_ray.preprocess.derive import INPUT_SCHEMA

pytestmark = pytest.mark.timeout(600)


def _test_rows(pipeline_run, n):
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / "test").sample(n=n, random_state=1)
    records = [{k: v for k, v in r.items() if v is not None}
               for r in json.loads(df[list(INPUT_SCHEMA)].to_json(orient="records"))]
    return df, records


def test_health_ready_and_model(endpoint):
    assert requests.get(f"{endpoint}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{endpoint}/readyz", timeout=10).status_code == 200
    m = requests.get(f"{endpoint}/v1/model", timeout=10).json()
    assert m["name"] == "flights" and m["version"] == "1" and m["alias"] == "champion"
    schema = {f["name"]: f for f in m["input_schema"]}
    assert schema["distance"]["required"] and schema["tailnum"]["nullable"]
    assert "EWR" in schema["origin"]["known_categories"]
    assert m["metrics"]["test"]["roc_auc"] > 0.5


def test_http_probabilities_equal_spark_features_through_registered_model(endpoint, pipeline_run):
    """Train/serve parity: same real test rows, HTTP vs Spark features fed to the registered model."""
    from mlops_ray.serve.model import load_served_model

    cfg, home, _ = pipeline_run
    df, records = _test_rows(pipeline_run, 50)
    r = requests.post(f"{endpoint}/v1/predict", json={"records": records}, headers={"X-Request-ID": "parity-1"},
                      timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["X-Request-ID"] == "parity-1"
    body = r.json()
    assert body["request_id"] == "parity-1" and body["model"]["version"] == "1"
    http = np.array([p["probability"] for p in body["predictions"]])
    model = load_served_model(cfg.register_, home, "models:/flights@champion", home.root / "dl-parity")
    direct = model.estimator.predict_proba(np.stack(df["features"].to_numpy()))[:, 1]
    np.testing.assert_allclose(http, direct, rtol=0, atol=1e-9)
    assert all(p["label"] == int(p["probability"] >= p["threshold"]) for p in body["predictions"])


GOOD = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
        "dest": "SFO", "distance": 2565}


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code", "loc"), [
    ("post", "/v1/predict", {"data": b"not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b'{"records": [{"distance": NaN}]}',
                             "headers": {"Content-Type": "application/json"}}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b"", "headers": {"Content-Type": "application/json"}}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b"{}", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type", None),
    ("post", "/v1/predict", {"json": {"records": [{k: v for k, v in GOOD.items() if k != "carrier"}]}},
     422, "validation_error", ["records", 0, "carrier"]),
    ("post", "/v1/predict", {"json": {"records": [{**GOOD, "distance": "far"}]}}, 422, "validation_error",
     ["records", 0, "distance"]),
    ("post", "/v1/predict", {"json": {"records": [{**GOOD, "arr_delay": 12}]}}, 422, "validation_error",
     ["records", 0, "arr_delay"]),
    ("post", "/v1/predict", {"json": {"records": []}}, 422, "validation_error", ["records"]),
    ("post", "/v1/predict", {"json": {"records": [GOOD] * 51}}, 413, "payload_too_large", None),
    ("post", "/v1/predict", {"data": b'{"records": [' + b" " * 70000 + b"]}",
                             "headers": {"Content-Type": "application/json"}}, 413, "payload_too_large", None),
    ("get", "/v1/predict", {}, 405, "method_not_allowed", None),
    ("get", "/nowhere", {}, 404, "not_found", None),
])
def test_bad_requests_get_4xx_json(endpoint, method, path, kwargs, status, code, loc):
    r = getattr(requests, method)(f"{endpoint}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if loc is not None:
        assert loc in [f["loc"] for f in err["fields"]]


def test_chunked_body_over_the_cap_is_413(endpoint):
    def chunks():
        yield b'{"records": ['
        for _ in range(100):
            yield b" " * 1000
        yield b"]}"

    r = requests.post(f"{endpoint}/v1/predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unseen_categories_and_missing_optionals_are_answered(endpoint):
    rec = {**GOOD, "carrier": "ZZ", "dest": "XXX", "tailnum": "NOPE"}
    r = requests.post(f"{endpoint}/v1/predict", json={"records": [rec]}, timeout=30)
    assert r.status_code == 200, r.text
    assert 0.0 < r.json()["predictions"][0]["probability"] < 1.0


def test_custom_metrics_reach_the_prometheus_export(endpoint, pipeline_run):
    port = pipeline_run[0].engines.ray.metrics_export_port
    requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, timeout=30)
    requests.post(f"{endpoint}/v1/predict", json={"records": [{**GOOD, "month": 13}]}, timeout=30)
    wanted = ("ray_mlops_predictions_total", "ray_mlops_inference_latency_ms_bucket",
              "ray_mlops_validation_errors_total", "ray_mlops_request_errors_total", "ray_serve_")
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported after 60 s: {missing}"
    assert 'field="month"' in text
