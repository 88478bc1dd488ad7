"""Late labels from a file: joined to the logged predictions by request id, every row stored or rejected with
its reason (rows = stored + rejected), through the library and the `mlops-ray feedback` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mlops_ray.errors import DataError
from mlops_ray.home import Home
from mlops_ray.monitor.feedback import import_labels
from mlops_ray.monitor.online import labelled_predictions_since, rolling_metrics
from mlops_ray.serve.prediction_log import open_prediction_log, sqlite_log_path

REC = {"Age": 30}


def _preds(ps):
    return [{"probability": p, "label": int(p >= 0.5), "threshold": 0.5} for p in ps]


@pytest.fixture()
def home(tmp_path):
    h = Home.resolve(tmp_path / "home").ensure()
    log = open_prediction_log(h)
    log.log_predictions("one", "credit", "1", [REC], _preds([0.8]))
    log.log_predictions("three", "credit", "1", [REC] * 3, _preds([0.1, 0.6, 0.4]))
    log.close()
    return h


def test_labels_are_stored_and_every_other_row_rejected_with_its_reason(home):
    labels = pd.DataFrame({
        "request_id": ["one", "three", "three", "three", "ghost", "three", "one"],
        "record_index": [None, 0, 1, 5, 0, None, 0],
        "label": [1, 0, 1, 1, 1, 0, 7],
    })
    log = open_prediction_log(home)
    res = import_labels(log, labels)
    assert res.rows == 7 and res.stored == 3 and res.stored + len(res.rejects) == res.rows
    by_row = dict(zip(zip(res.rejects["request_id"], res.rejects["label"]), res.rejects["reason"]))
    assert by_row == {("three", 1): "record_index 5 outside the request's 3 record(s)",
                      ("ghost", 1): "unknown request_id: no logged prediction carries it",
                      ("three", 0): "record_index missing: the request held 3 records",
                      ("one", 7): "label must be 0 or 1; got 7"}
    assert [r.true_label for r in log.predictions_of("one")] == [1]
    assert [r.true_label for r in log.predictions_of("three")] == [0, 1, None]
    proba, pred, true = labelled_predictions_since(sqlite_log_path(home), 0)
    assert sorted(zip(proba.tolist(), true.tolist())) == [(0.1, 0), (0.6, 1), (0.8, 1)]
    assert rolling_metrics(proba, pred, true)["accuracy"] == 1.0
    log.close()


def test_a_frame_without_the_required_columns_is_refused(home):
    log = open_prediction_log(home)
    with pytest.raises(DataError, match=r"column\(s\) \['label'\] missing; expected request_id, label"):
        import_labels(log, pd.DataFrame({"request_id": ["one"], "outcome": [1]}))
    log.close()


def test_the_feedback_command_stores_reports_and_writes_rejects(home, tmp_path):
    src = tmp_path / "labels.csv"
    pd.DataFrame({"request_id": ["one", "ghost"], "label": [0, 1]}).to_csv(src, index=False)
    rejects = tmp_path / "rejects.csv"
    env = {**os.environ, "MLOPS_RAY_HOME": str(home.root)}
    exe = Path(sys.executable).parent / "mlops-ray"
    r = subprocess.run([str(exe), "feedback", "--labels", str(src), "--rejects", str(rejects)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # a rejected row is not a silent success
    assert "2 rows; 1 stored; 1 rejected" in r.stdout and "unknown request_id" in r.stdout
    assert pd.read_csv(rejects)["request_id"].tolist() == ["ghost"]
    log = open_prediction_log(home)
    assert [x.true_label for x in log.predictions_of("one")] == [0]
    log.close()


#: one labels file with good rows and every kind of bad row, as text (the file's exact cells); reason per bad row
PLANTED = [  # (request_id, record_index, label) -> None when stored, else the expected reason
    (("one", "", "1"), None),
    (("three", "0", "0"), None),
    (("three", "2", "1"), None),
    (("three", "1", "x"), "label must be 0 or 1; got 'x'"),
    (("", "0", "1"), "request_id is empty"),
    (("three", "1.5", "1"), "record_index must be a whole number; got '1.5'"),
    (("three", "1", ""), "label is empty"),
    (("ghost", "0", "1"), "unknown request_id: no logged prediction carries it"),
    (("three", "7", "1"), "record_index 7 outside the request's 3 record(s)"),
    (("one", "0", "7.0"), "label must be 0 or 1; got '7.0'"),
    (("three", "", "1"), "record_index missing: the request held 3 records"),
    (("three", "abc", "0.5"), "label must be 0 or 1; got '0.5'; record_index must be a whole number; got 'abc'"),
]


def _feedback_table(home) -> set[tuple]:
    import sqlite3

    conn = sqlite3.connect(sqlite_log_path(home))
    try:
        return set(conn.execute("SELECT request_id, record_index, label FROM feedback").fetchall())
    finally:
        conn.close()


def test_every_bad_kind_in_one_file_is_rejected_as_given_and_the_good_rows_are_stored(home, tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("request_id,record_index,label\n" + "".join(",".join(cells) + "\n" for cells, _ in PLANTED))
    rejects = tmp_path / "rejects.csv"
    env = {**os.environ, "MLOPS_RAY_HOME": str(home.root)}
    exe = Path(sys.executable).parent / "mlops-ray"
    r = subprocess.run([str(exe), "feedback", "--labels", str(src), "--rejects", str(rejects)], env=env,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out  # rows were rejected: not a silent success
    assert "Traceback" not in out
    bad = [(cells, why) for cells, why in PLANTED if why is not None]
    good = [cells for cells, why in PLANTED if why is None]
    assert f"{len(PLANTED)} rows; {len(good)} stored; {len(bad)} rejected" in " ".join(r.stdout.split())
    # the stored rows, and only they, are in the prediction log's feedback table
    assert _feedback_table(home) == {("one", 0, 1), ("three", 0, 0), ("three", 2, 1)}
    # each bad row is in the rejects file with its original text and a reason naming the field at fault
    got = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    assert list(got.columns) == ["request_id", "record_index", "label", "reason"]
    assert [(tuple(row[:3]), row[3]) for row in got.itertuples(index=False)] == bad
    for (rid, idx, label), why in bad:
        assert any(field in why for field in ("request_id", "record_index", "label"))
    assert len(good) + len(got) == len(PLANTED)


def test_the_library_accounts_for_every_row_of_a_text_frame(home):
    frame = pd.DataFrame([cells for cells, _ in PLANTED], columns=["request_id", "record_index", "label"])
    log = open_prediction_log(home)
    res = import_labels(log, frame)
    log.close()
    want_bad = [(cells, why) for cells, why in PLANTED if why is not None]
    assert res.rows == len(PLANTED) and res.stored == len(PLANTED) - len(want_bad)
    assert res.stored + len(res.rejects) == res.rows
    assert [(tuple(row[:3]), row[3]) for row in res.rejects.itertuples(index=False)] == want_bad
    assert _feedback_table(home) == {("one", 0, 1), ("three", 0, 0), ("three", 2, 1)}


def test_numeric_frames_get_the_same_reasons(home):
    """A frame of numbers (as from Parquet): a null label is empty, 1.5 is not a whole index, a null id is empty."""
    frame = pd.DataFrame({"request_id": ["three", "three", None, "three"],
                          "record_index": [1.5, 1.0, 0.0, 2.0],
                          "label": [1.0, float("nan"), 1.0, 1.0]})
    log = open_prediction_log(home)
    res = import_labels(log, frame)
    log.close()
    assert res.rows == 4 and res.stored == 1
    assert res.rejects["reason"].tolist() == ["record_index must be a whole number; got 1.5", "label is empty",
                                              "request_id is empty"]
    assert _feedback_table(home) == {("three", 2, 1)}
