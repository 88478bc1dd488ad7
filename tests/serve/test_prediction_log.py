"""The SQLite prediction log (no Ray): rows per record, feedback joined to them, several writer processes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from mlops_ray.errors import MlopsRayError
from mlops_ray.home import Home
from mlops_ray.serve.prediction_log import (DuplicateRequestId, SQLitePredictionLog, UnknownRequestId,
                                            open_prediction_log, sqlite_log_path)

REC = {"year": 2013, "month": 11, "day": 4, "sched_dep_time": 1745, "carrier": "UA", "origin": "EWR",
       "dest": "SFO", "distance": 2565}


def _preds(n):
    return [{"probability": 0.1 * (i + 1), "label": int(0.1 * (i + 1) >= 0.25), "threshold": 0.25} for i in range(n)]


@pytest.fixture()
def log(tmp_path):
    lg = open_prediction_log(Home.resolve(tmp_path))
    yield lg
    lg.close()


def test_one_row_per_record_under_home_predictions_in_wal_mode(log, tmp_path):
    records = [REC, {**REC, "tailnum": None}, {**REC, "day": 5}]
    log.log_predictions("r1", "flights", "3", records, _preds(3))
    rows = log.predictions_of("r1")
    assert [r.record_index for r in rows] == [0, 1, 2]
    assert [r.record for r in rows] == records
    assert [r.probability for r in rows] == pytest.approx([0.1, 0.2, 0.3])
    assert [r.label for r in rows] == [0, 0, 1] and {r.threshold for r in rows} == {0.25}
    assert {(r.model_name, r.model_version) for r in rows} == {("flights", "3")}
    assert rows[0].created_at.endswith("+00:00") and all(r.true_label is None for r in rows)
    path = sqlite_log_path(Home.resolve(tmp_path))
    assert path == tmp_path / "predictions" / "predictions.db"
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert log.record_count("r1") == 3 and log.record_count("nope") == 0 and log.predictions_of("nope") == []


def test_duplicate_request_id_writes_nothing(log):
    log.log_predictions("dup", "flights", "1", [REC], _preds(1))
    with pytest.raises(DuplicateRequestId, match="'dup' is already in the prediction log"):
        log.log_predictions("dup", "flights", "1", [REC, REC], _preds(2))
    assert log.record_count("dup") == 1


def test_mismatched_predictions_are_refused(log):
    with pytest.raises(ValueError, match="as many predictions as records"):
        log.log_predictions("m", "flights", "1", [REC, REC], _preds(1))
    assert log.record_count("m") == 0


def test_feedback_joins_the_logged_predictions_and_replaces_earlier_labels(log, tmp_path):
    log.log_predictions("f", "flights", "2", [REC, REC], _preds(2))
    assert log.add_feedback("f", {0: 1, 1: 0}) == 2
    assert [r.true_label for r in log.predictions_of("f")] == [1, 0]
    assert log.add_feedback("f", {1: 1}) == 1
    assert [r.true_label for r in log.predictions_of("f")] == [1, 1]
    with sqlite3.connect(sqlite_log_path(Home.resolve(tmp_path))) as c:
        joined = c.execute("SELECT record_index, predicted_label, true_label, model_version FROM labelled_predictions "
                           "WHERE request_id = 'f' ORDER BY record_index").fetchall()
    assert joined == [(0, 0, 1, "2"), (1, 0, 1, "2")]


@pytest.mark.parametrize(("request_id", "labels", "error", "match"), [
    ("unknown", {0: 1}, UnknownRequestId, "no logged predictions with request id 'unknown'"),
    ("f", {2: 1}, ValueError, r"record index \[2\] outside request 'f', which held 2"),
    ("f", {0: 2}, ValueError, "must be 0 or 1"),
    ("f", {0: True}, ValueError, "must be 0 or 1"),
])
def test_bad_feedback_writes_nothing(log, request_id, labels, error, match):
    log.log_predictions("f", "flights", "2", [REC, REC], _preds(2))
    with pytest.raises(error, match=match):
        log.add_feedback(request_id, labels)
    assert [r.true_label for r in log.predictions_of("f")] == [None, None]


def test_unwritable_folder_says_so(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MlopsRayError, match="cannot be opened.*writable"):
        SQLitePredictionLog(blocker / "predictions.db")


def _writer(path: str, worker: int, n_requests: int, start) -> None:
    lg = SQLitePredictionLog(path, busy_timeout_s=30)
    start.wait()
    for i in range(n_requests):
        lg.log_predictions(f"w{worker}-{i}", "flights", "1", [REC] * 3, _preds(3))
        if i % 10 == 0:
            lg.add_feedback(f"w{worker}-{i}", {0: 1})
    lg.close()


def test_writer_processes_racing_lose_no_rows(tmp_path):
    """Replicas are separate processes: 4 writers started together, every row arrives."""
    path = str(tmp_path / "predictions" / "predictions.db")
    SQLitePredictionLog(path).close()
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_writer, args=(path, w, 150, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT count(*), count(DISTINCT request_id) FROM predictions").fetchone() == (4 * 150 * 3,
                                                                                                      4 * 150)
        assert c.execute("SELECT count(*) FROM feedback").fetchone()[0] == 4 * 15
