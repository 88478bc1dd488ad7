"""Batch scoring on Ray Data (``mlops-ray predict``) against the live endpoint.

240 real test-split flights, some with optional fields nulled and one invalid, are scored by
:func:`mlops_ray.serve.batch.run_batch_predict` on the session's Ray and by ``POST /v1/predict``: every valid row
gets the endpoint's probability to 1e-12, the invalid row is kept with a null probability and the error the
endpoint answers 422 for, and rows out = rows in. The CLI does the same from a CSV file in its own process, where
one more row holds a number that is not one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from mlops_ray.errors import MlopsRayError
from mlops_ray.preprocess.derive import INPUT_SCHEMA

pytestmark = pytest.mark.timeout(600)

ROWS = 240
INVALID_ROW = 37
BAD_NUMBER_ROW = 52  # the CLI test plants distance=abc there
NULLED = {"tailnum": range(0, 12), "time_hour": range(12, 24), "sched_arr_time": range(24, 30)}


def _real_rows(pipeline_run) -> pd.DataFrame:
    """ROWS real test-split rows: input columns, an id and the true label (both passed through)."""
    pre = pipeline_run[2]["stages"]["preprocess"]["outputs"]
    df = pd.read_parquet(Path(pre["path"]) / "data" / "test").sample(n=ROWS, random_state=11)
    df = df[list(INPUT_SCHEMA) + ["label"]].rename(columns={"label": "true_label"}).reset_index(drop=True)
    df.insert(0, "row_id", np.arange(ROWS) * 7 + 1000)
    df["sched_arr_time"] = df["sched_arr_time"].astype("Int64")
    return df


@pytest.fixture(scope="module")
def rows(pipeline_run) -> pd.DataFrame:
    """The real rows with some optional fields nulled and one invalid row."""
    df = _real_rows(pipeline_run)
    for col, idx in NULLED.items():
        df.loc[list(idx), col] = pd.NA if col == "sched_arr_time" else None
    df.loc[INVALID_ROW, "month"] = 13
    return df


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as API records: input columns only, nulls left out."""
    return [{k: v for k, v in r.items() if v is not None} for r in json.loads(df[list(INPUT_SCHEMA)].to_json(orient="records"))]


def _endpoint_scores(endpoint: str, records: list[dict], per_request: int = 50) -> list[dict]:
    out = []
    with requests.Session() as s:
        for i in range(0, len(records), per_request):
            r = s.post(f"{endpoint}/v1/predict", json={"records": records[i:i + per_request]}, timeout=60)
            assert r.status_code == 200, r.text
            out += r.json()["predictions"]
    return out


@dataclass(frozen=True)
class CliRun:
    """What ``mlops-ray predict`` on the dirty CSV did: the finished process and the rows it wrote."""

    proc: subprocess.CompletedProcess
    out: pd.DataFrame


@pytest.fixture(scope="module")
def scored(rows, pipeline_run, sessions, tmp_path_factory):
    """(result, scored rows as pandas) of run_batch_predict on a Parquet file of ``rows``, and the :class:`CliRun`
    of ``mlops-ray predict`` on a CSV file of the same rows plus one ``distance=abc``.

    The CLI runs in its own process, connected through RAY_ADDRESS to the session's Ray, after this process scored
    the Parquet file (run at the same time, the two took longer than one after the other here: 47 s against 40 s).
    """
    from mlops_ray.serve.batch import run_batch_predict

    cfg, home, _ = pipeline_run
    d = tmp_path_factory.mktemp("batch")
    rows.to_parquet(d / "rows.parquet", index=False)
    dirty = rows.astype({"distance": object})
    dirty.loc[BAD_NUMBER_ROW, "distance"] = "abc"
    dirty.to_csv(d / "rows.csv", index=False)
    ray = sessions.ray()
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "MLOPS_RAY_HOME": str(home.root),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    cmd = [str(Path(sys.executable).parent / "mlops-ray"), "predict", "--data", str(d / "rows.csv"), "--out",
           str(d / "scored.csv")]
    res = run_batch_predict(cfg.register_, home, d / "rows.parquet", d / "scored", "models:/flights@champion", ray)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    parts = sorted((d / "scored.csv").glob("*.csv"))
    cli_out = pd.concat([pd.read_csv(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    return res, pd.read_parquet(d / "scored").convert_dtypes(dtype_backend="numpy_nullable"), CliRun(proc, cli_out)


@pytest.fixture(scope="module")
def batch_scored(scored):
    """(result, scored rows as pandas) of run_batch_predict on the Parquet file."""
    return scored[0], scored[1]


def test_batch_scores_equal_the_endpoint_and_no_row_is_lost(batch_scored, rows, endpoint, pipeline_run):
    res, out = batch_scored
    assert (res.rows_in, res.rows_out, res.rows_scored, res.rows_invalid) == (ROWS, ROWS, ROWS - 1, 1)
    assert res.model_uri == "models:/flights/1" and res.version == "1"
    assert len(out) == ROWS and out["row_id"].tolist() == rows["row_id"].tolist()  # all rows, in order
    assert out["true_label"].tolist() == rows["true_label"].tolist()  # other columns passed through
    assert out["tailnum"].isna().sum() == len(NULLED["tailnum"]) and out["time_hour"].isna().sum() == 12

    valid = rows.index != INVALID_ROW
    http = _endpoint_scores(endpoint, _records(rows[valid]))
    batch_p = out.loc[valid, "probability"].to_numpy(dtype=float)
    http_p = np.array([p["probability"] for p in http])
    np.testing.assert_allclose(batch_p, http_p, rtol=0, atol=1e-12)
    assert out.loc[valid, "label"].tolist() == [p["label"] for p in http]
    assert (out.loc[valid, "threshold"] == http[0]["threshold"]).all()
    assert out.loc[valid, "error"].isna().all() and np.std(batch_p) > 0.01

    # The invalid row is kept: null score, and the same field and problem the endpoint answers 422 for.
    bad = out.loc[INVALID_ROW]
    assert pd.isna(bad["probability"]) and pd.isna(bad["label"]) and bad["row_id"] == rows.loc[INVALID_ROW, "row_id"]
    r = requests.post(f"{endpoint}/v1/predict", json={"records": _records(rows.loc[[INVALID_ROW]])}, timeout=30)
    assert r.status_code == 422
    (field,) = r.json()["error"]["fields"]
    assert field["loc"][-1] == "month" and bad["error"] == f"month: {field['msg']}"

    # The 1e-12 comparison can fail: the endpoint's scores of the same rows before the nulls were planted differ.
    nulled = sorted(i for idx in NULLED.values() for i in idx)
    before = _endpoint_scores(endpoint, _records(_real_rows(pipeline_run).loc[nulled]))
    diff = np.abs(out.loc[nulled, "probability"].to_numpy(dtype=float) - [p["probability"] for p in before])
    assert diff.max() > 1e-12, diff


def test_cli_predict_scores_a_csv_file_on_the_running_cluster(scored, rows):
    """``mlops-ray predict`` in its own process, connected through RAY_ADDRESS to the session's Ray, on a CSV file
    with one more bad row than ``rows``: ``distance=abc``. The cell makes Ray Data's CSV reader read the whole
    column as text, yet only its row is rejected, every other row scores as from the clean Parquet file, and the
    column is written back as numbers."""
    _, parquet_out, cli = scored
    proc, out = cli.proc, cli.out
    assert proc.returncode == 1, proc.stderr[-3000:]  # rows were rejected (as `mlops-ray feedback` exits 1)
    assert f"wrote {ROWS:,} rows with models:/flights/1 -> " in proc.stdout, proc.stdout
    assert f"scored {ROWS - 2:,} of {ROWS:,} rows; 2 rejected (see the `error` column)" in proc.stdout, proc.stdout
    assert "joining the running Ray" not in proc.stderr  # RAY_ADDRESS given: no lookup
    assert out["row_id"].tolist() == rows["row_id"].tolist()
    want = parquet_out["probability"].to_numpy(dtype=float, na_value=np.nan)  # NaN at the invalid row
    want[BAD_NUMBER_ROW] = np.nan
    np.testing.assert_allclose(out["probability"].to_numpy(dtype=float), want, rtol=0, atol=1e-12)
    errors = {i: e for i, e in enumerate(out["error"]) if not pd.isna(e)}
    assert errors.keys() == {INVALID_ROW, BAD_NUMBER_ROW}, errors
    assert errors[INVALID_ROW].startswith("month: ")
    assert errors[BAD_NUMBER_ROW] == "distance: expected number, got str 'abc'"
    assert pd.api.types.is_float_dtype(out["distance"]) and pd.isna(out.loc[BAD_NUMBER_ROW, "distance"])
    keep = rows.index != BAD_NUMBER_ROW
    assert out.loc[keep, "distance"].tolist() == rows.loc[keep, "distance"].astype(float).tolist()


@pytest.mark.parametrize(("make", "out", "match"), [
    (lambda d: d / "missing.parquet", "o1", r"does not exist; pass a CSV or Parquet file"),
    (lambda d: (d / "rows.json").write_text("{}") and d / "rows.json", "o2", r"expected a \.csv or \.parquet file"),
    (lambda d: d / "rows.parquet", "taken", r"already exists and is not an empty folder"),
    (lambda d: d / "no_carrier.parquet", "o3", r"lacks required column\(s\) \['carrier'\]"),
    (lambda d: d / "with_label.parquet", "o4", r"already has column\(s\) \['label'\], which scoring adds"),
])
def test_bad_inputs_are_refused_with_the_fix(make, out, match, rows, pipeline_run, sessions, tmp_path):
    from mlops_ray.serve.batch import run_batch_predict

    cfg, home, _ = pipeline_run
    small = rows.head(5)
    small.to_parquet(tmp_path / "rows.parquet", index=False)
    small.drop(columns=["carrier"]).to_parquet(tmp_path / "no_carrier.parquet", index=False)
    small.rename(columns={"true_label": "label"}).to_parquet(tmp_path / "with_label.parquet", index=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "part-0.parquet").write_bytes(b"x")
    with pytest.raises(MlopsRayError, match=match):
        run_batch_predict(cfg.register_, home, make(tmp_path), tmp_path / out, "models:/flights@champion",
                          sessions.ray())
