"""Serving done right on Ray Serve: API key, request batching, rollout through ``user_config`` (hot swap
under load, a version that fails to load), canary and shadow, graceful shutdown.

Real Serve applications of the session's Ray, each under its own route prefix on the session's Serve
port, serving a registry of their own (v1 = the pipeline's tuned model, champion; v2 = a model fit on
shuffled labels, challenger), so the session's main application and registry are left as they were.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from mlops_ray.config import AutoscalingConfig, BatchingConfig
from mlops_ray.home import Home
from mlops_ray.serve.prediction_log import sqlite_log_path
from tests.registry.conftest import register_from_run, register_worse
from tests.serve.test_http import GOOD, _test_rows

pytestmark = pytest.mark.timeout(600)

APP, PREFIX = "rollout_test", "/rollout-test"
KEY = "s3cret-key-\u00e9"  # non-ASCII on purpose: compared as UTF-8 bytes
#: 99.9 % two-sided normal quantile, for the Wilson interval of the canary share.
Z_999 = 3.2905


def wilson_interval(k: int, n: int, z: float = Z_999) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (Wilson 1927)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.fixture(scope="module")
def registry_home(pipeline_run, tmp_path_factory):
    """(cfg, home, record): a registry of its own with v1 champion and v2 challenger."""
    cfg, _, record = pipeline_run
    home = Home.resolve(tmp_path_factory.mktemp("rollout_home")).ensure()
    v1 = register_from_run(cfg, home, record, run_id="good")
    v2 = register_worse(cfg, home, record, tmp_path_factory.mktemp("worse"))
    assert (v1.version, v1.alias, v2.version, v2.alias) == ("1", "champion", "2", "challenger")
    return cfg, home, record


def _deploy_cfg(cfg, key_file, **changes):
    return cfg.deploy.model_copy(update={
        "app_name": APP, "route_prefix": PREFIX, "api_key_file": str(key_file), "max_ongoing_requests": 16,
        "batching": BatchingConfig(enabled=True, max_batch_size=4, batch_wait_timeout_s=0.1),
        "autoscaling": AutoscalingConfig(min_replicas=1, max_replicas=1), **changes})


@pytest.fixture(scope="module")
def app(registry_home, tmp_path_factory):
    """The application with an API key and batching: (url, auth headers, deploy config, cfg, home, record)."""
    import ray
    from ray import serve

    from mlops_ray.serve import run_deploy

    cfg, home, record = registry_home
    key_file = tmp_path_factory.mktemp("secrets") / "api_key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    deploy = _deploy_cfg(cfg, key_file)
    res = run_deploy(deploy, cfg.register_, ray, home)
    assert res.version == "1"
    try:
        # the header carries the key as UTF-8 bytes (requests would send a str header as latin-1)
        yield res.url, {"Authorization": f"Bearer {KEY}".encode("utf-8")}, deploy, cfg, home, record
    finally:
        serve.delete(APP)


def _model(url, auth) -> dict:
    r = requests.get(f"{url}/v1/model", headers=auth, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _log_rows(home, request_id):
    with sqlite3.connect(sqlite_log_path(home), timeout=10) as c:
        return c.execute("SELECT record_index, model_version, probability, label FROM predictions WHERE request_id = ? "
                         "ORDER BY record_index", (request_id,)).fetchall()


# ------------------------------------------------------------------ API key (the 401 rows of the error table)
@pytest.mark.parametrize(("method", "path", "auth", "status", "code"), [
    ("post", "/v1/predict", None, 401, "unauthorized"),
    ("post", "/v1/predict", "Bearer wrong-key", 401, "unauthorized"),
    ("post", "/v1/predict", "Bearer " + KEY[:-1], 401, "unauthorized"),  # a prefix of the key
    ("post", "/v1/predict", "Basic KEY", 401, "unauthorized"),           # the right key, wrong scheme
    ("post", "/v1/predict", "Bearer ", 401, "unauthorized"),
    ("get", "/v1/model", None, 401, "unauthorized"),
    ("post", "/v1/feedback", "Bearer nope", 401, "unauthorized"),
    ("get", "/nowhere", None, 401, "unauthorized"),
    ("get", "/docs", None, 401, "unauthorized"),
    # open probes, and the right key passes to the routes (so the 401s are not a server refusing everything)
    ("get", "/healthz", None, 200, None),
    ("get", "/readyz", None, 200, None),
    ("post", "/v1/predict", "Bearer KEY", 200, None),
    ("post", "/v1/predict", "bearer KEY", 200, None),
    ("get", "/nowhere", "Bearer KEY", 404, "not_found"),
    ("post", "/v1/predict", "Bearer KEY", 422, "validation_error"),
])
def test_api_key_is_required_except_on_probes(app, method, path, auth, status, code):
    url = app[0]
    headers = {} if auth is None else {"Authorization": auth.replace("KEY", KEY).encode("utf-8")}
    body = {"records": [GOOD if status != 422 else {**GOOD, "distance": "far"}]}
    r = getattr(requests, method)(f"{url}{path}", headers=headers, timeout=30,
                                  **({"json": body} if method == "post" else {}))
    assert r.status_code == status, r.text
    if code is None:
        return
    assert r.headers["Content-Type"] == "application/json" and KEY not in r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if status == 401:
        assert err["fields"] == [] and r.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 422:
        assert ["records", 0, "distance"] in [f["loc"] for f in err["fields"]]


# ------------------------------------------------------------------ batching
def test_batched_answers_and_log_rows_equal_the_unbatched_path(app, tmp_path):
    from mlops_ray.serve.model import load_served_model

    url, auth, _, cfg, home, record = app
    _, records = _test_rows((None, None, record), 24)
    chunks = [records[i:i + 3] for i in range(0, 24, 3)]  # 8 requests of 3 records
    before = _model(url, auth)["batching"]
    barrier = threading.Barrier(len(chunks))

    def post(recs):
        barrier.wait()
        return requests.post(f"{url}/v1/predict", json={"records": recs}, headers=auth, timeout=60)

    with ThreadPoolExecutor(len(chunks)) as pool:
        answers = list(pool.map(post, chunks))
    after = _model(url, auth)["batching"]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    # several requests went through one predict_proba call (else the comparison below proves nothing)
    assert after["batched_requests"] - before["batched_requests"] == len(chunks), (before, after)
    assert after["largest_batch_requests"] >= 2 and after["batches"] - before["batches"] < len(chunks), (before, after)
    unbatched = load_served_model(cfg.register_, home, "models:/flights/1", tmp_path / "dl")
    for recs, r in zip(chunks, answers):
        got = r.json()["predictions"]
        want = unbatched.predictions(recs)  # the unbatched path: one request's records alone
        np.testing.assert_allclose([p["probability"] for p in got], [p["probability"] for p in want], rtol=0, atol=1e-12)
        assert [(p["label"], p["threshold"]) for p in got] == [(p["label"], p["threshold"]) for p in want]
        rows = _log_rows(home, r.json()["request_id"])
        assert [(i, v, lab) for i, v, _, lab in rows] == [(i, "1", p["label"]) for i, p in enumerate(got)]
        assert [row[2] for row in rows] == [p["probability"] for p in got]


# ------------------------------------------------------------------ canary and shadow
def _versions(url, auth, n, threads=4) -> list[tuple[str, str, str]]:
    """(version, alias, request id) of ``n`` single-record answers."""
    def post(_):
        r = requests.post(f"{url}/v1/predict", json={"records": [GOOD]}, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        b = r.json()
        return b["model"]["version"], b["model"]["alias"], b["request_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, range(n)))


def _reconfigure(app, **changes) -> dict:
    """Redeploy with changed serving options; asserts the replica was kept (reconfigured, not replaced)."""
    import ray

    from mlops_ray.serve import run_deploy

    url, auth, deploy, cfg, home, _ = app
    replica = _model(url, auth)["replica_id"]
    run_deploy(deploy.model_copy(update=changes), cfg.register_, ray, home)
    m = _model(url, auth)
    assert m["replica_id"] == replica, "the replica was replaced instead of reconfigured"
    return m


def test_canary_share_is_inside_the_wilson_interval_and_a_planted_share_is_not(app):
    url, auth, _, _, home, _ = app
    m = _reconfigure(app, canary_percent=20.0)
    assert m["challenger"]["version"] == "2" and m["canary_percent"] == 20.0
    answers = _versions(url, auth, 400)
    k = sum(v == "2" for v, _, _ in answers)
    lo, hi = wilson_interval(k, 400)
    assert lo <= 0.20 <= hi, f"challenger answered {k}/400; 99.9% Wilson interval [{lo:.3f}, {hi:.3f}]"
    assert {(v, a) for v, a, _ in answers} == {("1", "champion"), ("2", "challenger")}
    # the split follows the request id (a hash), and the log names the version that answered
    assert all((v == "2") == (int.from_bytes(hashlib.sha256(rid.encode()).digest()[:8], "big") / 2 ** 64 < 0.2)
               for v, _, rid in answers)
    with sqlite3.connect(sqlite_log_path(home), timeout=10) as c:
        logged = dict(c.execute(f"SELECT request_id, model_version FROM predictions WHERE request_id IN "
                                f"({','.join('?' * len(answers))})", [rid for _, _, rid in answers]).fetchall())
    assert logged == {rid: v for v, _, rid in answers}
    # planted: every request to the challenger; the same check must reject a 20 % canary
    _reconfigure(app, canary_percent=100.0)
    planted = _versions(url, auth, 100)
    k = sum(v == "2" for v, _, _ in planted)
    lo, hi = wilson_interval(k, 100)
    assert k == 100 and not lo <= 0.20 <= hi


def test_shadow_scores_every_request_and_answers_from_the_champion(app):
    url, auth, *_ = app
    m = _reconfigure(app, canary_percent=0.0, shadow=True)
    assert m["shadow"]["enabled"] and m["challenger"]["version"] == "2"
    before = m["shadow"]["records_scored"]
    answers = _versions(url, auth, 30)
    assert {(v, a) for v, a, _ in answers} == {("1", "champion")}
    deadline = time.monotonic() + 30
    while _model(url, auth)["shadow"]["records_scored"] < before + 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _model(url, auth)["shadow"]["records_scored"] == before + 30
    # planted: shadow off -> the challenger scores nothing more
    m = _reconfigure(app, shadow=False)
    assert m["challenger"] is None and not m["shadow"]["enabled"]
    _versions(url, auth, 10)
    assert _model(url, auth)["shadow"]["records_scored"] == before + 30


# ------------------------------------------------------------------ hot swap through the registry aliases
class Load:
    """Client threads posting one record in a loop: (start time, status, version) of every answer."""

    def __init__(self, url, auth, threads=3):
        self.url, self.auth = url, auth
        self.results: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                r = requests.post(f"{self.url}/v1/predict", json={"records": [GOOD]}, headers=self.auth, timeout=60)
                self.results.append((t, r.status_code, r.json()["model"]["version"] if r.status_code == 200 else r.text))
            except requests.RequestException as e:
                self.results.append((t, -1, str(e)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


def _cli(args, cfg_file):
    from mlops_ray.cli import app as cli

    return CliRunner().invoke(cli, [*args, "--config", str(cfg_file)])


def _cfg_file(app, tmp_path, monkeypatch):
    from mlops_ray.config import config_to_yaml

    _, _, deploy, cfg, home, _ = app
    monkeypatch.setenv("MLOPS_RAY_HOME", str(home.root))
    f = tmp_path / "cfg.yaml"
    f.write_text(config_to_yaml(cfg.model_copy(update={"deploy": deploy})))
    return f


def test_promote_and_rollback_hot_swap_live_replicas_without_a_failed_request(app, tmp_path, monkeypatch):
    url, auth, *_ = app
    cfg_file = _cfg_file(app, tmp_path, monkeypatch)
    replica = _model(url, auth)["replica_id"]
    with Load(url, auth) as load:
        deadline = time.monotonic() + 30
        while len(load.results) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        res = _cli(["models", "promote", "flights", "2"], cfg_file)
        switched = time.monotonic()
        assert res.exit_code == 0 and "now serves v2" in res.output, res.output
        deadline = time.monotonic() + 30
        while sum(t > switched for t, _, _ in load.results) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        rolling_back = time.monotonic()  # requests from here on may meet either version until the rollback returns
        res = _cli(["models", "rollback", "flights"], cfg_file)
        back = time.monotonic()
        assert res.exit_code == 0 and "now serves v1" in res.output, res.output
        deadline = time.monotonic() + 30
        while sum(t > back for t, _, _ in load.results) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    failed = [r for r in load.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(load.results)} requests failed during the swaps: {failed[:3]}"
    assert {v for t, _, v in load.results if switched < t < rolling_back} == {"2"}
    assert {v for t, _, v in load.results if t > back} == {"1"}
    assert "1" in {v for t, _, v in load.results if t < switched}
    assert _model(url, auth)["replica_id"] == replica, "the replica was replaced instead of reconfigured"
    print(f"hot swap under load: {len(load.results)} requests, 0 failed")


def _register_corrupted(app, out_dir):
    """A third version (a model on differently shuffled labels) whose stored model file is then overwritten."""
    from sklearn.linear_model import LogisticRegression

    from mlops_ray.evaluate import run_evaluate
    from mlops_ray.preprocess import load_split
    from mlops_ray.registry import client
    from mlops_ray.tune import save_model

    _, _, _, cfg, home, record = app
    pre = record["stages"]["preprocess"]["outputs"]
    X, y = load_split(pre["path"], "train")
    model = LogisticRegression(max_iter=300).fit(X, np.random.default_rng(7).permutation(y))
    path = save_model(model, out_dir)
    ev = run_evaluate(cfg.evaluate.model_copy(update={"n_bootstrap": 20}), model, pre["path"], out_dir)
    v = register_from_run(cfg, home, record, model_path=str(path), evaluation=ev, run_id="corrupt")
    sha = client(cfg.register_, home).get_model_version("flights", v.version).tags["model_sha256"]
    stored = [p for p in home.root.rglob(path.name) if hashlib.sha256(p.read_bytes()).hexdigest() == sha]
    assert stored, "the registered model file was not found under the home"
    for p in stored:
        p.write_bytes(b"corrupted")
    return v.version


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(app, tmp_path, monkeypatch):
    url, auth, *_ = app
    cfg_file = _cfg_file(app, tmp_path, monkeypatch)
    bad = _register_corrupted(app, tmp_path)
    replica = _model(url, auth)["replica_id"]
    failures_before = _model(url, auth)["reload_failures"]
    with Load(url, auth, threads=2) as load:
        t0 = time.monotonic()
        res = _cli(["models", "promote", "flights", bad], cfg_file)
        took = time.monotonic() - t0
    assert res.exit_code == 1 and f"failed to load v{bad}" in res.output and "still serve v1" in res.output, res.output
    assert took < 60, f"the failed switch took {took:.0f} s to report"
    assert load.results and {(s, v) for _, s, v in load.results} == {(200, "1")}
    m = _model(url, auth)
    assert m["version"] == "1" and m["replica_id"] == replica
    assert m["reload_failures"] == failures_before + 1
    assert m["last_reload_error"]["version"] == bad and "verification" in m["last_reload_error"]["error"]
    ready = requests.get(f"{url}/readyz", timeout=10).json()
    assert ready["reload_failed_version"] == bad and "error" not in ready  # details only behind the key
    res = _cli(["models", "rollback", "flights"], cfg_file)
    assert res.exit_code == 0 and "now serves v1" in res.output, res.output
    assert "reload_failed_version" not in requests.get(f"{url}/readyz", timeout=10).json()


def test_reload_failures_and_shadow_scores_reach_the_prometheus_export(app, pipeline_run):
    """After the tests above: the counters are exported with their model_version labels."""
    port = pipeline_run[0].engines.ray.metrics_export_port
    wanted = ('ray_mlops_model_reload_failures_total{', 'ray_mlops_shadow_predictions_total{')
    deadline = time.monotonic() + 60
    lines: list[str] = []
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lines = [ln for ln in text.splitlines() if ln.startswith(wanted)]
        if (any(ln.startswith(wanted[0]) and 'model_version="3"' in ln for ln in lines)
                and any(ln.startswith(wanted[1]) and 'model_version="2"' in ln for ln in lines)):
            break
        time.sleep(2)
    else:
        pytest.fail(f"not exported after 60 s; found: {lines}")


# ------------------------------------------------------------------ graceful shutdown
DRAIN_APP, DRAIN_PREFIX = "drain_test", "/drain-test"


def _slow_requests(url, records, n):
    """``n`` concurrent requests; the batch wait (3 s) keeps them in flight on the replica."""
    def post(i):
        try:
            return requests.post(f"{url}/v1/predict", json={"records": records[i:i + 2]}, timeout=90)
        except requests.RequestException as e:
            return e

    pool = ThreadPoolExecutor(n)
    return pool, [pool.submit(post, 2 * i) for i in range(n)]


def test_in_flight_requests_complete_when_replicas_are_replaced(registry_home):
    """A redeploy replaces the replica while slow requests are in flight: with a graceful shutdown timeout
    above their duration all answer 200 and are logged; with a planted timeout below it, some fail."""
    import ray
    from ray import serve

    from mlops_ray.serve import run_deploy

    cfg, home, record = registry_home
    _, records = _test_rows((None, None, record), 8)
    base = cfg.deploy.model_copy(update={
        "app_name": DRAIN_APP, "route_prefix": DRAIN_PREFIX, "max_ongoing_requests": 16,
        "batching": BatchingConfig(enabled=True, max_batch_size=16, batch_wait_timeout_s=3.0),
        "autoscaling": AutoscalingConfig(min_replicas=1, max_replicas=1), "graceful_shutdown_wait_loop_s": 0.2})

    def deploy(max_records, grace_s):  # another max_records: other constructor arguments, so new replicas
        return run_deploy(base.model_copy(update={"max_records": max_records, "graceful_shutdown_timeout_s": grace_s}),
                          cfg.register_, ray, home)

    def in_flight_during_redeploy(url, next_max_records, next_grace_s):
        pool, futures = _slow_requests(url, records, 4)
        time.sleep(1.0)  # they reach the replica and wait in its batch (3 s); then the redeploy replaces it
        deploy(next_max_records, next_grace_s)
        out = [f.result() for f in futures]
        pool.shutdown()
        return out

    try:
        url = deploy(50, 1.0).url  # planted: the old replica is killed 1 s into its drain, before its batch is scored
        planted = in_flight_during_redeploy(url, 49, 30.0)
        assert any(not isinstance(r, requests.Response) or r.status_code != 200 for r in planted), \
            "with a 1 s graceful shutdown timeout every slow request still succeeded: the check cannot fail"
        answers = in_flight_during_redeploy(url, 48, 30.0)
        bad = [r if not isinstance(r, requests.Response) else f"{r.status_code} {r.text[:200]}" for r in answers
               if not isinstance(r, requests.Response) or r.status_code != 200]
        assert not bad, bad
        for r in answers:
            body = r.json()
            assert len(_log_rows(home, body["request_id"])) == len(body["predictions"]) == 2
    finally:
        serve.delete(DRAIN_APP)


# ------------------------------------------------------------------ config rules (no cluster)
@pytest.mark.parametrize(("deploy", "message"), [
    ({"api_key_env": "MLOPS_KEY", "api_key_file": "/run/secrets/key"},
     r"deploy.api_key_env \('MLOPS_KEY'\) and deploy.api_key_file \('/run/secrets/key'\) are both set"),
    ({"canary_percent": 10, "shadow": True}, r"deploy.canary_percent \(10.0\) and deploy.shadow \(true\)"),
    ({"batching": {"enabled": True, "max_batch_size": 8}},
     r"deploy.batching.max_batch_size \(8\) exceeds deploy.max_ongoing_requests \(5\).*>= 8"),
    ({"canary_percent": 101}, r"less than or equal to 100"),
    ({"api_key": "s3cret"}, r"Extra inputs are not permitted"),  # the key itself never goes in the YAML
])
def test_serving_options_are_checked_with_both_fields_named(deploy, message):
    from mlops_ray.config import DeployConfig

    with pytest.raises(ValueError, match=message):
        DeployConfig(**deploy)
    ok = {k: v for k, v in deploy.items() if k not in ("api_key_file", "shadow", "canary_percent", "api_key")}
    if "batching" in ok:
        ok["max_ongoing_requests"] = 8
    DeployConfig(**ok)  # the same options without the conflict are accepted
