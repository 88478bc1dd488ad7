"""The Ray Serve endpoint over real HTTP: round trip, parity with Spark features, the error table, metrics,
the prediction log (written before the answer) and feedback."""

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
_JSON = {"headers": {"Content-Type": "application/json"}}


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
    ("post", "/v1/predict/", {"json": {"records": [GOOD]}}, 404, "not_found", None),  # no 307 to follow
    # strict parsing: what FastAPI's defaults let through or turn into a plain-text 500
    ("post", "/v1/predict", {"data": json.dumps({"records": [GOOD]}).encode("utf-16"), **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b'{"records": [{"carrier": "\xff"}]}', **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b'{"records": [{"distance": -Infinity}]}', **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b'{"records": [], "records": [{}]}', **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b'{"records": [{"year": 2013', **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b"[" * 30000 + b"]" * 30000, **_JSON}, 400, "bad_json", None),
    ("post", "/v1/predict", {"data": b"{}", "headers": {}}, 415, "unsupported_media_type", None),
    ("post", "/v1/predict", {"data": json.dumps({"records": [GOOD]}).encode(),
                             "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     415, "unsupported_media_type", None),
    ("post", "/v1/predict", {"data": b'{"records": [{"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, '
                                     b'"carrier": "UA", "origin": "EWR", "dest": "SFO", "distance": 1e999}]}', **_JSON},
     422, "validation_error", ["records", 0, "distance"]),
    ("post", "/v1/predict", {"json": {"records": [{**GOOD, "colour": "red"}]}}, 422, "validation_error",
     ["records", 0, "colour"]),
    ("post", "/v1/predict", {"data": b'{"records": [{"\\ud800": 1}]}', **_JSON},
     422, "validation_error", ["records", 0, "\ud800"]),
    ("post", "/v1/predict", {"json": {"records": [{**GOOD, "year": 9999}]}}, 422, "validation_error",
     ["records", 0, "year"]),
    # Serve's proxy echoes X-Request-ID as sent: one the body and the log could not carry is refused
    ("post", "/v1/predict", {"json": {"records": [GOOD]}, "headers": {"X-Request-ID": "r" * 129}}, 422,
     "validation_error", ["header", "X-Request-ID"]),
    ("post", "/v1/predict", {"json": {"records": [GOOD], "model": "v2"}}, 422, "validation_error", ["model"]),
    ("post", "/v1/predict", {"json": {"records": [GOOD, [1, 2]]}}, 422, "validation_error", ["records", 1]),
    # feedback
    ("post", "/v1/feedback", {"json": {"request_id": "never-answered", "label": 1}}, 404, "not_found", None),
    ("post", "/v1/feedback", {"json": {"request_id": "x", "label": 2}}, 422, "validation_error", ["label"]),
    ("post", "/v1/feedback", {"json": {"request_id": "x", "labels": [1, None]}}, 422, "validation_error",
     ["labels", 1]),
    ("post", "/v1/feedback", {"json": {"label": 1}}, 422, "validation_error", ["request_id"]),
    ("post", "/v1/feedback", {"data": b'{"request_id": "x", "label": NaN}', **_JSON}, 400, "bad_json", None),
    ("post", "/v1/feedback", {"data": b"label=1", "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported_media_type", None),
    ("post", "/v1/feedback", {"data": b'{"request_id": "' + b"x" * 70000 + b'", "label": 1}', **_JSON},
     413, "payload_too_large", None),
    ("get", "/v1/feedback", {}, 405, "method_not_allowed", None),
])
def test_bad_requests_get_4xx_json(endpoint, method, path, kwargs, status, code, loc):
    r = getattr(requests, method)(f"{endpoint}{path}", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json" and "Traceback" not in r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if loc is not None:
        assert loc in [f["loc"] for f in err["fields"]], err["fields"]


def test_each_route_names_its_own_body_and_a_trailing_slash_names_the_route(endpoint):
    empty = {"data": b"", **_JSON}
    assert '{"records": [...]}' in requests.post(f"{endpoint}/v1/predict", timeout=30, **empty).json()["error"]["message"]
    msg = requests.post(f"{endpoint}/v1/feedback", timeout=30, **empty).json()["error"]["message"]
    assert '"request_id"' in msg and "records" not in msg
    r = requests.post(f"{endpoint}/v1/predict/", json={"records": [GOOD]}, timeout=30, allow_redirects=False)
    assert r.status_code == 404 and "did you mean /v1/predict?" in r.json()["error"]["message"]


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
              "ray_mlops_validation_errors_total", "ray_mlops_request_errors_total", "ray_serve_",
              'field="month"')  # polled too: earlier tests' validation errors may be exported before this one
    deadline = time.monotonic() + 60
    text = ""
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported after 60 s: {missing}"


# ------------------------------------------------------------------ prediction log and feedback
def _log_rows(pipeline_run, request_id):
    """The logged rows of ``request_id``, read from the database file by this (separate) process."""
    import sqlite3

    from mlops_ray.serve.prediction_log import sqlite_log_path

    with sqlite3.connect(sqlite_log_path(pipeline_run[1]), timeout=10) as c:
        return c.execute("SELECT record_index, model_name, model_version, input_json, probability, label, threshold "
                         "FROM predictions WHERE request_id = ? ORDER BY record_index", (request_id,)).fetchall()


def test_every_200_answer_is_logged_before_it_is_sent(endpoint, pipeline_run):
    """Read right after each answer arrives: the rows must already be committed (one per record)."""
    _, records = _test_rows(pipeline_run, 12)
    sizes = [1, 3, 1, 7]
    seen = 0
    for k, n in enumerate(sizes):
        batch = records[seen:seen + n]
        seen += n
        headers = {"X-Request-ID": f"log-{k}-{time.time_ns()}"} if k % 2 else {}  # client's id and the server's
        r = requests.post(f"{endpoint}/v1/predict", json={"records": batch}, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        rows = _log_rows(pipeline_run, body["request_id"])  # no waiting: written before the answer
        assert [row[0] for row in rows] == list(range(n))
        assert {(row[1], row[2]) for row in rows} == {("flights", body["model"]["version"])}
        assert [json.loads(row[3]) for row in rows] == batch
        assert [(row[4], row[5], row[6]) for row in rows] == [(p["probability"], p["label"], p["threshold"])
                                                              for p in body["predictions"]]
        if headers:
            assert body["request_id"] == headers["X-Request-ID"]


def test_feedback_round_trip_joins_labels_to_the_logged_predictions(endpoint, pipeline_run):
    import sqlite3

    from mlops_ray.serve.prediction_log import sqlite_log_path

    _, records = _test_rows(pipeline_run, 3)
    r = requests.post(f"{endpoint}/v1/predict", json={"records": records}, timeout=60)
    rid = r.json()["request_id"]
    fb = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "labels": [1, 0, 1]}, timeout=30)
    assert fb.status_code == 202 and fb.json() == {"request_id": rid, "labels_stored": 3}, fb.text
    fb = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "record_index": 1, "label": 1}, timeout=30)
    assert fb.status_code == 202 and fb.json()["labels_stored"] == 1, fb.text
    # the contract's single-label form is for a one-record request; here it must say which record
    fb = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "label": 0}, timeout=30)
    assert fb.status_code == 422 and fb.json()["error"]["fields"][0]["loc"] == ["record_index"]
    fb = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "labels": [1, 0]}, timeout=30)
    assert fb.status_code == 422 and fb.json()["error"]["fields"][0]["loc"] == ["labels"]
    with sqlite3.connect(sqlite_log_path(pipeline_run[1])) as c:
        joined = c.execute("SELECT record_index, true_label, predicted_label, probability FROM labelled_predictions "
                           "WHERE request_id = ? ORDER BY record_index", (rid,)).fetchall()
    preds = r.json()["predictions"]
    assert joined == [(i, t, p["label"], p["probability"]) for i, (t, p) in enumerate(zip([1, 1, 1], preds))]

    one = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, timeout=30).json()["request_id"]
    fb = requests.post(f"{endpoint}/v1/feedback", json={"request_id": one, "label": 0}, timeout=30)
    assert fb.status_code == 202, fb.text
    with sqlite3.connect(sqlite_log_path(pipeline_run[1])) as c:
        assert c.execute("SELECT true_label FROM labelled_predictions WHERE request_id = ?", (one,)).fetchall() == [(0,)]


def test_a_reused_request_id_is_409_and_keeps_the_first_answer(endpoint, pipeline_run):
    rid = f"reused-{time.time_ns()}"
    first = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, headers={"X-Request-ID": rid}, timeout=30)
    assert first.status_code == 200
    again = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD, GOOD]}, headers={"X-Request-ID": rid},
                          timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict", again.text
    assert len(_log_rows(pipeline_run, rid)) == 1


def test_a_failing_prediction_log_is_a_json_500_with_the_request_id_and_no_answer(endpoint, pipeline_run):
    """Plant a fault in the real database (a trigger that aborts one request's insert): no 200 without a log row."""
    import sqlite3

    from mlops_ray.serve.prediction_log import sqlite_log_path

    rid = f"fault-{time.time_ns()}"
    with sqlite3.connect(sqlite_log_path(pipeline_run[1]), timeout=10) as c:
        c.execute(f"CREATE TRIGGER planted_fault BEFORE INSERT ON predictions WHEN NEW.request_id = '{rid}' "
                  "BEGIN SELECT RAISE(ABORT, 'planted fault'); END")
    try:
        r = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, headers={"X-Request-ID": rid},
                          timeout=30)
    finally:
        with sqlite3.connect(sqlite_log_path(pipeline_run[1]), timeout=10) as c:
            c.execute("DROP TRIGGER planted_fault")
    assert r.status_code == 500, r.text
    assert r.headers["X-Request-ID"] == rid and "Traceback" not in r.text and "planted fault" not in r.text
    assert r.json()["error"]["code"] == "internal_error" and rid in r.json()["error"]["message"]
    assert _log_rows(pipeline_run, rid) == []
    ok = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, headers={"X-Request-ID": rid}, timeout=30)
    assert ok.status_code == 200 and len(_log_rows(pipeline_run, rid)) == 1


def test_a_replica_without_a_model_answers_503_unavailable(pipeline_run, endpoint):
    """A second, small application in the same Serve instance whose model version does not exist: 503 where a
    model is needed, while feedback (which needs only the shared prediction log) still works from it."""
    from ray import serve

    from mlops_ray.serve.app import model_server

    cfg, home, _ = pipeline_run
    serve.run(model_server(cfg.deploy, cfg.register_, home, "models:/flights/999", "champion"), name="no_model",
              route_prefix="/no-model", blocking=False)
    try:
        deadline = time.monotonic() + 120
        ready = None
        while time.monotonic() < deadline:
            ready = requests.get(f"{endpoint}/no-model/readyz", timeout=10)
            if ready.status_code == 503 and "not ready: " in ready.text and "loading" not in ready.text:
                break
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 503, ready.text if ready is not None else "no answer"
        assert ready.json()["error"]["code"] == "unavailable" and "999" in ready.json()["error"]["message"]
        r = requests.post(f"{endpoint}/no-model/v1/predict", json={"records": [GOOD]}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        # feedback needs only the shared log: this replica (another process) labels what the main app answered
        rid = requests.post(f"{endpoint}/v1/predict", json={"records": [GOOD]}, timeout=30).json()["request_id"]
        r = requests.post(f"{endpoint}/no-model/v1/feedback", json={"request_id": rid, "label": 1}, timeout=30)
        assert r.status_code == 202, r.text
        r = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "label": 0}, timeout=30)
        assert r.status_code == 202, r.text
        r = requests.get(f"{endpoint}/no-model/v1/model", timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable", r.text
        assert requests.get(f"{endpoint}/no-model/healthz", timeout=10).status_code == 200
    finally:
        serve.delete("no_model")
