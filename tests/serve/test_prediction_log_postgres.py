"""The PostgreSQL prediction log (replicas on several machines) against a real PostgreSQL server: the same
behaviour as the SQLite log, writers in several processes, and credentials only from the environment."""

from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest

from mlops_ray.errors import MlopsRayError
from mlops_ray.serve.prediction_log import (DuplicateRequestId, PostgresPredictionLog, UnknownRequestId,
                                            open_prediction_log)

REC = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
       "dest": "SFO", "distance": 2565}
PASSWORD_ENV = "MLOPS_RAY_TEST_PREDLOG_PW"


def _preds(n):
    return [{"probability": 0.1 * (i + 1), "label": int(0.1 * (i + 1) >= 0.25), "threshold": 0.25} for i in range(n)]


@pytest.fixture(scope="module")
def pg_log_url(postgres):
    """A database and a password-protected role owning it; the URL carries no password."""
    import psycopg

    postgres.create_database("predlog")
    with psycopg.connect(postgres.uri(), autocommit=True) as conn:
        conn.execute("CREATE ROLE predlog_writer LOGIN PASSWORD 'pl-s3cret'")
        conn.execute('ALTER DATABASE "predlog" OWNER TO predlog_writer')
    return f"postgresql://predlog_writer@{postgres.host}:{postgres.port}/predlog"


@pytest.fixture()
def log(pg_log_url, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "pl-s3cret")
    lg = open_prediction_log(None, url=pg_log_url, password_env=PASSWORD_ENV)
    assert isinstance(lg, PostgresPredictionLog)
    yield lg
    lg.close()


def _rid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


def test_rows_feedback_and_the_labelled_view(log):
    rid = _rid("r")
    records = [REC, {**REC, "tailnum": None}, {**REC, "day": 5}]
    log.log_predictions(rid, "flights", "3", records, _preds(3))
    rows = log.predictions_of(rid)
    assert [r.record for r in rows] == records and [r.label for r in rows] == [0, 0, 1]
    assert log.record_count(rid) == 3 and log.record_count("nope") == 0
    since = rows[0].created_at
    assert log.add_feedback(rid, {0: 1, 2: 0}) == 2
    assert log.add_feedback(rid, {2: 1}) == 1  # a label sent again replaces the earlier one
    assert [r.true_label for r in log.predictions_of(rid)] == [1, None, 1]
    labelled = {(round(p, 9), a, b) for p, a, b in log.labelled_since(since)}
    assert {(0.1, 0, 1), (0.3, 1, 1)} <= labelled and not any(p == 0.2 for p, _, _ in labelled)


def test_duplicates_and_bad_feedback_write_nothing(log):
    rid = _rid("dup")
    log.log_predictions(rid, "flights", "1", [REC], _preds(1))
    with pytest.raises(DuplicateRequestId, match="is already in the prediction log"):
        log.log_predictions(rid, "flights", "1", [REC, REC], _preds(2))
    assert log.record_count(rid) == 1
    with pytest.raises(UnknownRequestId, match="no logged predictions with request id 'unknown'"):
        log.add_feedback("unknown", {0: 1})
    with pytest.raises(ValueError, match=r"record index \[1\] outside request"):
        log.add_feedback(rid, {0: 1, 1: 1})
    assert [r.true_label for r in log.predictions_of(rid)] == [None]  # the valid label of that call was not kept


def test_credentials_come_from_the_environment_only(pg_log_url, monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(MlopsRayError, match=rf"environment variable {PASSWORD_ENV}, which is not set"):
        PostgresPredictionLog(pg_log_url, password_env=PASSWORD_ENV)
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(MlopsRayError, match=r"prediction log postgresql://predlog_writer@.* cannot be opened") as err:
        PostgresPredictionLog(pg_log_url, password_env=PASSWORD_ENV)
    assert "wrong" not in str(err.value) and "pl-s3cret" not in str(err.value)


def _writer(url: str, worker: int, n_requests: int, start, tag: str) -> None:
    import os

    os.environ[PASSWORD_ENV] = "pl-s3cret"
    lg = PostgresPredictionLog(url, password_env=PASSWORD_ENV, busy_timeout_s=30)
    start.wait()
    for i in range(n_requests):
        lg.log_predictions(f"{tag}-w{worker}-{i}", "flights", "1", [REC] * 3, _preds(3))
        if i % 10 == 0:
            lg.add_feedback(f"{tag}-w{worker}-{i}", {0: 1})
    lg.close()


def test_writer_processes_racing_lose_no_rows(pg_log_url, log):
    """Replicas on several machines are several processes: 4 writers started together, every row arrives."""
    tag = _rid("race")
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(pg_log_url, w, 100, start, tag)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    counts = [log.record_count(f"{tag}-w{w}-{i}") for w in range(4) for i in range(100)]
    assert counts == [3] * 400
    labelled = sum(r.true_label == 1 for w in range(4) for i in range(0, 100, 10)
                   for r in log.predictions_of(f"{tag}-w{w}-{i}"))
    assert labelled == 4 * 10


def test_the_drift_monitor_reads_rolling_metrics_from_the_postgres_log(log, pg_log_url):
    """The central monitor joins feedback in the PostgreSQL log as it does in SQLite (scikit-learn's figures)."""
    import time

    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from mlops_ray.monitor.online import DriftMonitor, DriftReference

    since = time.time()
    rid = _rid("roll")
    log.log_predictions(rid, "flights", "1", [REC] * 4, _preds(4))  # probabilities .1 .2 .3 .4, labels 0 0 1 1
    log.add_feedback(rid, {0: 0, 1: 1, 2: 1, 3: 0})
    monitor = DriftMonitor(DriftReference({}, {}, {}), window_s=60.0, prediction_log_path=pg_log_url,
                           export_interval_s=0, min_rows=4, prediction_log_password_env=PASSWORD_ENV)
    got = monitor.rolling(now=since + 60.0)  # the window starts exactly at `since`: this test's feedback only
    true, pred, proba = [0, 1, 1, 0], [0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]
    assert got == pytest.approx({"rows": 4, "accuracy": accuracy_score(true, pred), "f1": f1_score(true, pred),
                                 "roc_auc": roc_auc_score(true, proba)}, abs=1e-12)
    assert monitor.rolling(now=time.time() + 60.0)["rows"] == 0  # a window starting after the feedback sees none
