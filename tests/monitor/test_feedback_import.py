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
    assert by_row == {("three", 1): "record_index 5.0 outside the request's 3 record(s)",
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
