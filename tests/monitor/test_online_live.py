"""Online monitoring for real: two Serve replicas push bin counts to the one drift monitor actor, whose PSI (as
the actor returns it and as Ray's metrics port exports it) equals PSI recomputed from the prediction log; rolling
metrics from feedback; a real Prometheus scraping Ray runs every dashboard panel's query and the generated alert
rules, each of which fires once its condition is planted and not before.

One module: the replicas, the monitor actor and Prometheus are started once and shared, in test order.
"""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from mlops_ray.config import MonitorConfig
from mlops_ray.monitor.alerts import write_alert_rules
from mlops_ray.monitor.dashboard import panel_queries
from mlops_ray.monitor.drift import psi
from mlops_ray.monitor.online import DriftReference, labelled_predictions_since, rolling_metrics
from mlops_ray.preprocess.derive import INPUT_SCHEMA
from tests.conftest import running_prometheus

pytestmark = pytest.mark.timeout(600)

#: Thresholds chosen so that the real test rows stay quiet and each planted fault is far beyond them.
CFG = MonitorConfig(window_s=600, push_interval_s=1, export_interval_s=1, min_window_rows=30, psi_threshold=1.0,
                    min_roc_auc=0.35, max_error_rate=0.02, max_latency_p99_ms=2500, alert_for_s=1)
#: The drift app's prediction log busy timeout, seconds: a write blocked longer answers 500 (the planted errors);
#: above the latency threshold, so the same requests plant the p99 latency.
BUSY_TIMEOUT_S = 3.0
PREFIX = "drift-"
ALERTS = ("MlopsFeatureDrift", "MlopsAccuracyDrop", "MlopsHighErrorRate", "MlopsHighLatencyP99")


def _until(what: str, fn, timeout_s: float = 90, every_s: float = 1.0):
    """Poll ``fn`` until it returns a truthy value; fail naming ``what`` (and the last value) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s; last: {str(last)[:1500]}")


def _test_rows(pipeline_run, n, seed, split="train"):
    """``n`` real rows of ``split`` as request records, with their labels. The splits are by time, so the test
    split (the last months) has drifted weather against the training reference (temp PSI > 2), so the window
    this module fills (one for all its tests) takes training rows: quiet until a test plants drift."""
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / split)
    df = df.sample(n=min(n, len(df)), random_state=seed)
    records = [{k: v for k, v in r.items() if v is not None}
               for r in json.loads(df[list(INPUT_SCHEMA)].to_json(orient="records"))]
    return records, df["label"].astype(int).tolist()


APP, ROUTE = "drift_live", "/drift-live"


@pytest.fixture(scope="module")
def live(pipeline_run, sessions, tmp_path_factory):
    """(monitor actor handle, URL of the real model server with 2 replicas and online drift on, served model,
    reference) on the session's Ray: deployed by run_deploy with the monitor slice, as the pipeline deploys."""
    from ray import serve

    from mlops_ray.config import AutoscalingConfig
    from mlops_ray.monitor.online import MONITOR_NAMESPACE, monitor_actor_name
    from mlops_ray.serve import run_deploy
    from mlops_ray.serve.model import load_served_model

    cfg, home, _ = pipeline_run
    ray = sessions.ray()
    deploy = cfg.deploy.model_copy(update={"app_name": APP, "route_prefix": ROUTE,
                                           "autoscaling": AutoscalingConfig(min_replicas=2, max_replicas=2),
                                           "prediction_log_busy_timeout_s": BUSY_TIMEOUT_S})
    result = run_deploy(deploy, cfg.register_, ray, home, "models:/flights@champion", monitor_cfg=CFG)
    monitor = ray.get_actor(monitor_actor_name(APP), namespace=MONITOR_NAMESPACE)
    model = load_served_model(cfg.register_, home, "models:/flights@champion", tmp_path_factory.mktemp("drift-model"))
    reference = DriftReference.from_model_dir(model.path)
    yield monitor, result.url, model, reference
    serve.delete(APP)
    ray.kill(monitor)


def _send_logged(url: str, records, tag: str, per_request: int = 25) -> list[str]:
    """POST the records in chunks (8 at a time, so both replicas answer); every answer must be 200."""
    chunks = [records[i:i + per_request] for i in range(0, len(records), per_request)]
    rids = [f"{PREFIX}{tag}-{i}-{time.time_ns()}" for i in range(len(chunks))]

    def post(pair):
        rid, chunk = pair
        return requests.post(f"{url}/v1/predict", json={"records": chunk}, headers={"X-Request-ID": rid},
                             timeout=120).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, zip(rids, chunks)))
    assert codes == [200] * len(chunks), codes
    return rids


def _logged_records(home, since: float, prefix: str = PREFIX) -> list[dict]:
    """The input records the prediction log holds for ``prefix``-request ids created at or after ``since``."""
    from mlops_ray.monitor.online import _iso
    from mlops_ray.serve.prediction_log import sqlite_log_path

    with sqlite3.connect(sqlite_log_path(home), timeout=10) as c:
        rows = c.execute("SELECT input_json FROM predictions WHERE request_id LIKE ? AND created_at >= ? "
                         "ORDER BY request_id, record_index", (prefix + "%", _iso(since))).fetchall()
    return [json.loads(r[0]) for r in rows]


def _psi_from_records(model, reference: DriftReference, records: list[dict]) -> dict[str, tuple[float, float]]:
    """feature -> (PSI, null share) recomputed from raw records: derived as serving derives them, binned with
    pandas/NumPy on the reference's edges and vocabulary (not the recorder's code), PSI by drift.psi."""
    from mlops_ray.preprocess.reference import bin_index

    derived = model.transformer.derived(records)
    out = {}
    for name, edges in reference.numeric_edges.items():
        x = pd.to_numeric(derived[name], errors="coerce").to_numpy(dtype=float)
        ok = x[np.isfinite(x)]
        counts = np.bincount(bin_index(edges, ok), minlength=len(edges) + 1)
        out[name] = (psi(reference.counts[name], counts), 1 - ok.size / x.size)
    for name, cats in reference.categories.items():
        s = derived[name]
        vals = s[s.notna()].astype(str)
        counts = [int((vals == c).sum()) for c in cats] + [int((~vals.isin(cats)).sum())]
        out[name] = (psi(reference.counts[name], counts), float(s.isna().mean()))
    return out


def _exported(port: int, family: str, label: str) -> dict[str, float]:
    """label value -> sample value of ``family`` on Ray's metrics export port (Prometheus text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {s.labels[label]: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == family and label in s.labels}


# ---------------------------------------------------------------------------------------------------------- tests
def test_psi_across_two_replicas_equals_psi_recomputed_from_the_prediction_log(live, pipeline_run):
    import ray

    monitor, url, model, reference = live
    cfg, home, _ = pipeline_run
    records, _ = _test_rows(pipeline_run, 400, seed=7)
    _send_logged(url, records, "psi", per_request=10)
    _until("both replicas' windows at the monitor", lambda: ray.get(monitor.drift.remote())["rows"] == len(records)
           and len(ray.get(monitor.replicas.remote())) == 2)
    now = time.time()
    got = ray.get(monitor.export.remote(now))["drift"]
    logged = _logged_records(home, got["window_start"])
    assert len(logged) == len(records)
    want = _psi_from_records(model, reference, logged)
    worst = max(abs(got["features"][f]["psi"] - want[f][0]) for f in want)
    worst_null = max(abs(got["features"][f]["null_share"] - want[f][1]) for f in want)
    print(f"max |PSI(monitor) - PSI(log)| = {worst:.3e}; null share {worst_null:.3e}; features {len(want)}")
    assert worst <= 1e-6 and worst_null <= 1e-6

    # the check can fail: one replica's share of the records (what a per-replica gauge would see) is not it
    half = _psi_from_records(model, reference, logged[: len(logged) // 2])
    assert max(abs(got["features"][f]["psi"] - half[f][0]) for f in want) > 1e-3

    # and Ray's metrics port exports the same figures (the actor recomputes every second: same window, same counts)
    port = cfg.engines.ray.metrics_export_port
    exported = _until("ray_mlops_feature_psi on Ray's metrics port", lambda: (
        e := _exported(port, "ray_mlops_feature_psi", "feature")) and all(
        f in e and abs(e[f] - want[f][0]) <= 1e-6 for f in want) and e, timeout_s=60)
    assert set(want) <= set(exported)


def test_rolling_metrics_join_feedback_to_logged_predictions(live, pipeline_run, endpoint):
    import ray

    monitor, url, _, _ = live
    records, labels = _test_rows(pipeline_run, 200, seed=11)
    since = time.time()
    rids = _send_logged(url, records, "fb")
    for k, rid in enumerate(rids):  # feedback through the real endpoint: any replica finds the shared log
        r = requests.post(f"{endpoint}/v1/feedback", json={"request_id": rid, "labels": labels[25 * k:25 * k + 25]},
                          timeout=30)
        assert r.status_code == 202, r.text
    from mlops_ray.serve.prediction_log import sqlite_log_path

    proba, pred, true = labelled_predictions_since(sqlite_log_path(pipeline_run[1]), since)
    assert len(true) == len(records) and true.tolist() == labels
    from sklearn.metrics import roc_auc_score

    got = ray.get(monitor.rolling.remote())
    assert got["rows"] >= len(records)
    want = rolling_metrics(*labelled_predictions_since(sqlite_log_path(pipeline_run[1]), time.time() - CFG.window_s))
    assert got == pytest.approx(want, abs=1e-12)
    assert roc_auc_score(true, proba) > CFG.min_roc_auc  # real labels: the model is better than the alert threshold


# ---------------------------------------------------------------------------------------------- Prometheus
@pytest.fixture(scope="module")
def prometheus(pipeline_run, tmp_path_factory):
    """A real Prometheus on a free loopback port scraping Ray's metrics port every second, with the generated
    alert rules (evaluated every second)."""
    d = tmp_path_factory.mktemp("prometheus")
    write_alert_rules(CFG, "flights", d / "rules.yml")
    with running_prometheus(d, pipeline_run[0].engines.ray.metrics_export_port, (str(d / "rules.yml"),)) as url:
        yield url


def _query(prom: str, expr: str) -> list[dict]:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def _active_alerts(prom: str) -> dict[str, list[dict]]:
    """alertname -> its active (pending or firing) alerts."""
    out: dict[str, list[dict]] = {}
    for a in requests.get(f"{prom}/api/v1/alerts", timeout=10).json()["data"]["alerts"]:
        out.setdefault(a["labels"]["alertname"], []).append(a)
    return out


def _firing(prom: str, name: str, **labels) -> bool:
    return any(a["state"] == "firing" and all(a["labels"].get(k) == v for k, v in labels.items())
               for a in _active_alerts(prom).get(name, []))


def test_every_panel_query_returns_data_and_alerts_fire_only_once_planted(live, pipeline_run, endpoint, prometheus):
    _, url, _, _ = live
    records, labels = _test_rows(pipeline_run, 120, seed=3)
    good = records[:20]
    for i in range(0, len(good), 5):
        assert requests.post(f"{endpoint}/v1/predict", json={"records": good[i:i + 5]}, timeout=60).status_code == 200
    bad = requests.post(f"{endpoint}/v1/predict", json={"records": [{**good[0], "month": 13}]}, timeout=60)
    assert bad.status_code == 422  # a client error: counted by code and field, never a 5xx

    queries = {f"{title} [{i}]": q for title, qs in panel_queries(CFG).items() for i, q in enumerate(qs)}

    left: list[str] = list(queries)

    def all_answer() -> bool:
        left[:] = [k for k in left if not _query(prometheus, queries[k])]
        return not left

    deadline = time.monotonic() + 120
    while not all_answer() and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"panel queries without a series after 120 s: {[(k, queries[k]) for k in left]}"
    # the check can fail: a series nobody exports returns nothing through the same path
    assert _query(prometheus, "max by (feature) (ray_mlops_feature_psi_never_exported)") == []

    # nothing planted yet: no alert pending or firing (several 1-s evaluations after every series is there)
    time.sleep(CFG.alert_for_s + 1)
    active = _active_alerts(prometheus)
    assert not any(n in active for n in ALERTS), active

    # plant drift: distance far beyond the training range on 2000 records (about 3/4 of the window then) ->
    # PSI of `distance` > 2 (80 such records among ~700 only reach ~0.1: too weak for the threshold of 1)
    _send_logged(url, [{**r, "distance": 99_999} for r in records[20:100]] * 25, "planted", per_request=50)
    _until("MlopsFeatureDrift firing for distance", lambda: _firing(prometheus, "MlopsFeatureDrift",
                                                                     feature="distance"), timeout_s=90)
    active = _active_alerts(prometheus)
    assert not any(n in active for n in ALERTS[1:]), active

    # plant wrong feedback: the labels of every labelled request in the window replaced by their opposite
    from mlops_ray.serve.prediction_log import sqlite_log_path

    with sqlite3.connect(sqlite_log_path(pipeline_run[1]), timeout=10) as c:
        rows = c.execute("SELECT request_id, record_index, predicted_label FROM labelled_predictions").fetchall()
    by_rid: dict[str, dict[int, int]] = {}
    for rid, idx, pred in rows:
        by_rid.setdefault(rid, {})[idx] = 1 - pred
    for rid, lab in by_rid.items():
        r = requests.post(f"{endpoint}/v1/feedback",
                          json={"request_id": rid, "labels": [lab[i] for i in sorted(lab)]}, timeout=30)
        assert r.status_code == 202, r.text
    _until("MlopsAccuracyDrop firing", lambda: _firing(prometheus, "MlopsAccuracyDrop"), timeout_s=90)
    active = _active_alerts(prometheus)
    assert not any(n in active for n in ALERTS[2:]), active

    # plant server errors: hold the prediction log's write lock past the drift app's busy timeout -> slow 500s
    # (each waits BUSY_TIMEOUT_S * 1000 ms > max_latency_p99_ms: the same requests plant the latency)
    lock = sqlite3.connect(sqlite_log_path(pipeline_run[1]), timeout=10, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with ThreadPoolExecutor(4) as pool:  # 4 of ~80 requests in the 5-min window: 5xx share ~5% > 2%
            codes = list(pool.map(lambda r: requests.post(f"{url}/v1/predict", json={"records": [r]},
                                                          timeout=120).status_code, records[100:104]))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert codes == [500] * 4, codes
    _until("MlopsHighErrorRate and MlopsHighLatencyP99 firing", lambda: _firing(prometheus, "MlopsHighErrorRate")
           and _firing(prometheus, "MlopsHighLatencyP99"), timeout_s=90)
