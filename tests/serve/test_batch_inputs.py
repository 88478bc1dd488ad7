"""``mlops-ray predict`` without Ray: numeric input columns read as text, the exit code, and how Ray is found.

One bad cell (``distance=abc``) makes pyarrow (Ray Data's CSV reader) and pandas read the whole column as text;
:func:`mlops_ray.serve.batch.numbers_from_text` turns it back into numbers value by value, so only that row is
rejected. The CLI tests replace Ray (``Sessions.ray``) and the scoring run, so they start nothing.
"""

from __future__ import annotations

import math
import socket

import pandas as pd
import pytest
from typer.testing import CliRunner

from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.serve.batch import (BatchPredictResult, _csv_nulls, _json_ready, number_from_text, numbers_from_text,
                                   numeric_output)
from mlops_ray.serve.schema import validate_record

HEADER = "row_id,year,month,day,sched_dep_time,carrier,origin,dest,distance,sched_arr_time,flight,tailnum,time_hour"
ROWS = [
    "1,2013,1,1,515,UA,EWR,IAH,1400,819,1545,N14228,2013-01-01T05:00:00-05:00",
    "2,2013,1,1,529,UA,LGA,IAH,1416,830,1714,N24211,2013-01-01T05:00:00-05:00",
    "3,2013,1,1,540,AA,JFK,MIA,1089,,1141,N619AA,2013-01-01T05:00:00-05:00",
    "4,2013,1,1,545,B6,JFK,BQN,1576,1022,725,,2013-01-01T05:00:00-05:00",
    "5,2013,1,1,554,DL,LGA,ATL,762,740,461,N668DN,",
    "6,2013,1,1,558,AA,EWR,ORD,719,924,1696,N39463,2013-01-01T06:00:00-05:00",
]
BAD = 3  # 0-based: row_id 4


def _write(tmp_path, name: str, rows: list[str]):
    path = tmp_path / name
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def _read(path, how: str) -> pd.DataFrame:
    if how == "pyarrow":  # what ray.data.read_csv(path, convert_options=_csv_nulls()) hands the scorer
        import pyarrow.csv

        return pyarrow.csv.read_csv(path, convert_options=_csv_nulls()).to_pandas()
    return pd.read_csv(path)


def _validate(frame: pd.DataFrame):
    """(clean records, error per row) as BatchScorer does it."""
    values, converted = numbers_from_text(frame[[c for c in INPUT_SCHEMA if c in frame.columns]], INPUT_SCHEMA)
    cleans, errors = [], []
    for i, rec in enumerate(_json_ready(values)):
        clean, problems = validate_record(rec, i, INPUT_SCHEMA)
        cleans.append(clean)
        errors.append("; ".join(f"{p['loc'][-1]}: {p['msg']}" for p in problems) or None)
    return values, converted, cleans, errors


@pytest.mark.parametrize("how", ["pyarrow", "pandas"])
def test_one_bad_number_in_a_csv_rejects_only_its_row(tmp_path, how):
    clean_path = _write(tmp_path, "clean.csv", ROWS)
    dirty_rows = list(ROWS)
    dirty_rows[BAD] = dirty_rows[BAD].replace(",1576,", ",abc,")
    dirty = _read(_write(tmp_path, "dirty.csv", dirty_rows), how)
    clean = _read(clean_path, how)
    assert not pd.api.types.is_numeric_dtype(dirty["distance"])  # the bug's premise: the column came as text

    _, converted_clean, clean_recs, clean_errors = _validate(clean)
    assert converted_clean == [] and clean_errors == [None] * len(ROWS)

    values, converted, recs, errors = _validate(dirty)
    assert converted == ["distance"]
    assert errors[BAD] == "distance: expected number, got str 'abc'"
    assert [e for i, e in enumerate(errors) if i != BAD] == [None] * (len(ROWS) - 1)
    for i in range(len(ROWS)):
        if i != BAD:
            assert recs[i] == clean_recs[i]
            assert type(recs[i]["distance"]) is int  # "2422" is the integer 2422, as in the clean file

    # Written back as numbers: the clean file's values, null where the text was no number.
    out = numeric_output(values["distance"].tolist(), "number")
    assert str(out.dtype) == "Float64" and pd.isna(out[BAD])
    assert [float(v) for i, v in enumerate(out) if i != BAD] == \
        [float(v) for i, v in enumerate(clean["distance"]) if i != BAD]


def test_integer_columns_read_as_text(tmp_path):
    rows = list(ROWS)
    rows[0] = rows[0].replace(",819,", ",819.0,")  # a whole number written with a fraction: 819
    rows[1] = rows[1].replace(",830,", ",8x30,")  # not a number: rejected (this makes the column text)
    rows[3] = rows[3].replace(",1022,", ",1022.5,")  # not a whole number: rejected
    frame = _read(_write(tmp_path, "ints.csv", rows), "pyarrow")
    values, converted, recs, errors = _validate(frame)
    assert converted == ["sched_arr_time"]
    assert recs[0]["sched_arr_time"] == 819 and type(recs[0]["sched_arr_time"]) is int and errors[0] is None
    assert errors[1] == "sched_arr_time: expected integer, got str '8x30'"
    assert errors[2] is None and "sched_arr_time" not in recs[2]  # the empty cell is null (optional field)
    assert errors[3] == "sched_arr_time: expected integer, got float 1022.5"
    assert errors[4:] == [None] * 2 and recs[5]["sched_arr_time"] == 924
    out = numeric_output(values["sched_arr_time"].tolist(), "integer")
    assert str(out.dtype) == "Int64" and out[0] == 819 and out[5] == 924
    assert all(pd.isna(out[i]) for i in (1, 2, 3))


@pytest.mark.parametrize(("text", "expected"), [
    ("2422", 2422), (" 2422 ", 2422), ("-7", -7), ("+3", 3), ("2422.0", 2422), ("1e3", 1000), ("12.5", 12.5),
    (".5", 0.5), ("", None), ("   ", None), ("abc", "abc"), ("1_000", "1_000"), ("inf", "inf"), ("nan", "nan"),
    ("1e400", "1e400"), ("0x10", "0x10"), (7, 7), (None, None),
])
def test_number_from_text(text, expected):
    got = number_from_text(text)
    assert got == expected and type(got) is type(expected)


def test_columns_already_numeric_or_not_numeric_are_left_alone():
    frame = pd.DataFrame({"distance": [1.5, math.nan], "carrier": ["1", "2"], "other": ["3", "x"]})
    values, converted = numbers_from_text(frame, INPUT_SCHEMA)
    assert converted == [] and values.equals(frame)


# --------------------------------------------------------------------------- finding a running Ray


def _listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_lookup(monkeypatch, tmp_path):
    """Point running_local_ray at a temp address file and a fixed list of GCS processes."""
    import ray._common.utils
    import ray._private.services

    found: dict = {"file": None, "gcs": frozenset()}
    address_file = tmp_path / "ray_current_cluster"

    def set_(file=None, gcs=()):
        if file is not None:
            address_file.write_text(file + "\n")
        found["gcs"] = frozenset(gcs)

    monkeypatch.setattr(ray._common.utils, "get_ray_address_file", lambda temp_dir: str(address_file))
    monkeypatch.setattr(ray._private.services, "find_gcs_addresses", lambda: found["gcs"])
    return set_


def test_running_local_ray(ray_lookup):
    from mlops_ray.serve.batch import running_local_ray

    assert running_local_ray() is None  # no file, no GCS process
    ray_lookup(file=f"127.0.0.1:{_closed_port()}")
    assert running_local_ray() is None  # a stale file: nothing answers there
    with _listening() as s:
        live = f"127.0.0.1:{s.getsockname()[1]}"
        ray_lookup(gcs=[live])  # a Ray started by ray.init() writes no file: found by its GCS process
        assert running_local_ray() == live
        ray_lookup(file=live, gcs=[f"127.0.0.1:{_closed_port()}"])
        assert running_local_ray() == live


# --------------------------------------------------------------------------- the CLI, Ray replaced


@pytest.fixture
def cli(monkeypatch, tmp_path):
    """Run `mlops-ray predict` in this process with a temp home and no RAY_ADDRESS; returns (invoke, calls)."""
    import ray

    from mlops_ray.cli import app

    # As if this process held no Ray (a full test run may hold the session's): nothing here may stop that one.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: None)
    # The registry is replaced too: predict resolves the model URI before any Ray work (the home here is empty).
    from mlops_ray import registry

    monkeypatch.setattr(registry, "resolve_version", lambda *a, **k: None)
    monkeypatch.setenv("MLOPS_RAY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls: dict = {}

    def invoke():
        return CliRunner().invoke(app, ["predict", "--data", str(tmp_path / "rows.csv"), "--out",
                                        str(tmp_path / "scored.csv")])

    return invoke, calls


def _stub_ray(monkeypatch, calls, error: Exception | None = None):
    from mlops_ray.sessions import Sessions

    def fake_ray(self):
        calls["address"] = self.engines.ray.address
        if error is not None:
            raise error
        return object()

    monkeypatch.setattr(Sessions, "ray", fake_ray)


def test_a_ray_start_failure_is_one_line_with_the_fix(cli, monkeypatch):
    import mlops_ray.serve.batch as batch

    invoke, calls = cli
    monkeypatch.setattr(batch, "running_local_ray", lambda: None)
    _stub_ray(monkeypatch, calls, ValueError("Failed to bind to 127.0.0.1:8265 because it's already occupied. "
                                             "You can use `ray start --dashboard-port ...`\nmore detail"))
    res = invoke()
    assert res.exit_code == 2, res.output
    assert calls["address"] is None  # no running Ray found: a local one was started
    assert "Traceback" not in res.output
    assert "could not start a local Ray: Failed to bind to 127.0.0.1:8265 because it's already occupied." in res.output
    assert "RAY_ADDRESS" in res.output and "more detail" not in res.output


def test_predict_joins_the_running_local_ray(cli, monkeypatch):
    import mlops_ray.serve.batch as batch

    invoke, calls = cli
    monkeypatch.setattr(batch, "running_local_ray", lambda: "127.0.0.1:6379")
    _stub_ray(monkeypatch, calls, ConnectionError("GCS went away"))
    res = invoke()
    assert calls["address"] == "127.0.0.1:6379"
    assert "joining the running Ray at 127.0.0.1:6379" in res.output
    assert res.exit_code == 2 and "could not join the running Ray at 127.0.0.1:6379: GCS went away." in res.output
    assert "Traceback" not in res.output


def test_ray_address_wins_over_a_running_local_ray(cli, monkeypatch):
    import mlops_ray.serve.batch as batch

    invoke, calls = cli
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    monkeypatch.setattr(batch, "running_local_ray", lambda: pytest.fail("looked for a local Ray despite RAY_ADDRESS"))
    _stub_ray(monkeypatch, calls, ConnectionError("unreachable"))
    res = invoke()
    assert res.exit_code == 2 and "joining" not in res.output
    assert "could not connect to Ray at 10.0.0.9:6379: unreachable." in res.output


@pytest.mark.parametrize(("invalid", "code"), [(1, 1), (0, 0)])
def test_exit_code_says_whether_rows_were_rejected(cli, monkeypatch, tmp_path, invalid, code):
    import mlops_ray.serve.batch as batch

    invoke, calls = cli
    monkeypatch.setattr(batch, "running_local_ray", lambda: None)
    _stub_ray(monkeypatch, calls)
    monkeypatch.setattr(batch, "run_batch_predict", lambda *a, **k: BatchPredictResult(
        out=str(tmp_path / "scored.csv"), out_format="csv", model_uri="models:/flights/1", version="1", rows_in=6,
        rows_out=6, rows_scored=6 - invalid, rows_invalid=invalid))
    res = invoke()
    assert res.exit_code == code, res.output
    if invalid:
        assert "scored 5 of 6 rows; 1 rejected (see the `error` column)" in res.output
        assert "wrote 6 rows with models:/flights/1 -> " in res.output
    else:
        assert "scored 6 of 6 rows with models:/flights/1 -> " in res.output


def test_a_ray_this_process_holds_is_used_without_a_lookup(cli, monkeypatch):
    import ray

    import mlops_ray.serve.batch as batch

    invoke, calls = cli
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(batch, "running_local_ray", lambda: pytest.fail("looked for a local Ray with one connected"))
    _stub_ray(monkeypatch, calls, RuntimeError("stop here"))
    res = invoke()
    assert calls["address"] is None and "joining" not in res.output and res.exit_code == 2
