"""Row level: every failing row is quarantined with its reason (check, column, value); the accounting is exact."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from mlops_ray.errors import DataError
from mlops_ray.validate import FLOAT32_MAX
from tests.validate.conftest import (ingested_csv, kept_by_id, parquet_rows, quarantine_by_id, validate,
                                     validate_config)

pytestmark = pytest.mark.timeout(300)

#: Text columns (read without a schema, as a daily export often is) with one planted fault per row.
MIXED_CSV = """id,amount,score,big,huge,code,tail
1,10.5,0.5,1e30,1e39,AA,N1
2,N/A,0.1,1,1,AA,N2
3,7,inf,1,1,B6,N3
4,7,NaN,1,-1e39,B6,N4
5,7,0.2,1e39,1,UA,N5
6,-3,0.2,1,1,UA,N6
7,8,0.2,1,1,ZZ,N7
8,8,0.2,1,1,UA,X8
9,8,0.2,1,1,UA,
10,9,0.3,1,1,UA,N10
11,9,0.3,1,1,UA,N10
12,9,-Infinity,1,1,UA,N10
13,,0.3,1,1,UA,N13
"""

MIXED_EXPECTATIONS = [
    {"expect": "type", "column": "amount", "type": "double"},
    {"expect": "type", "column": "score", "type": "double"},
    {"expect": "type", "column": "big", "type": "double"},
    {"expect": "type", "column": "huge", "type": "float"},
    {"expect": "finite", "column": "huge", "clip": True},
    {"expect": "in_range", "column": "amount", "min": 0, "max": 100},
    {"expect": "in_set", "column": "code", "values": ["AA", "B6", "UA"]},
    {"expect": "regex", "column": "tail", "pattern": "^N[0-9]+$"},
    {"expect": "not_null", "column": "tail"},
    {"expect": "unique", "columns": ["tail"]},
]


def test_each_failing_row_is_quarantined_with_the_check_the_column_and_the_value(spark, tmp_path):
    path = ingested_csv(spark, tmp_path, MIXED_CSV)
    res = validate(spark, tmp_path, path, validate_config(rule_set="none", max_quarantine_share=1.0,
                                                          expectations=MIXED_EXPECTATIONS))
    assert quarantine_by_id(res) == {
        "2": ("type:amount", "amount", "N/A"),  # a numeric column holding "N/A"
        "3": ("finite:score", "score", "Infinity"),  # inf
        "4": ("finite:score", "score", "NaN"),
        "5": ("finite:big", "big", "1.0E39"),  # beyond float32, no clip declared
        "6": ("in_range:amount", "amount", "-3.0"),
        "7": ("in_set:code", "code", "ZZ"),
        "8": ("regex:tail", "tail", "X8"),
        "9": ("not_null:tail", "tail", None),
        "10": ("unique:tail", "tail", '{"tail":"N10"}'),  # every copy of a duplicated key
        "11": ("unique:tail", "tail", '{"tail":"N10"}'),
        "12": ("finite:score", "score", "-Infinity"),  # quarantined first: N10 is then duplicated by 10 and 11 only
    }
    kept = kept_by_id(res)
    assert sorted(kept) == ["1", "13"]
    assert kept["1"]["huge"] == pytest.approx(FLOAT32_MAX, rel=1e-7)  # clipped, not quarantined
    assert kept["13"]["amount"] is None  # null passes all but not_null
    assert (kept["1"]["amount"], kept["1"]["big"]) == (10.5, 1e30)
    assert (res.rows_in, res.rows_valid, res.rows_quarantined) == (13, 2, 11)
    assert res.quarantined == {"finite:big": 1, "finite:score": 3, "in_range:amount": 1, "in_set:code": 1,
                               "not_null:tail": 1, "regex:tail": 1, "type:amount": 1, "unique:tail": 2}
    assert res.clipped == {"finite:huge": 1}  # row 4's -1e39 was clipped too, but row 4 is quarantined
    assert {k: v for k, v in res.failures.items() if v} == {  # each row counted for every check it fails
        "finite:big": 1, "finite:score": 3, "in_range:amount": 1, "in_set:code": 1, "not_null:tail": 1,
        "regex:tail": 1, "type:amount": 1, "unique:tail": 2}
    valid_schema = dict((f["name"], f["type"]) for f in json.loads(
        spark.read.parquet(str(Path(res.path) / "valid")).schema.json())["fields"])
    assert valid_schema == {"id": "string", "amount": "double", "score": "double", "big": "double",
                            "huge": "float", "code": "string", "tail": "string"}
    raw = {r["id"]: r for r in parquet_rows(Path(res.path) / "quarantine")}
    assert raw["2"]["amount"] == "N/A"  # the quarantine keeps the row as it came in


def test_timestamps_in_any_zone_are_normalised_to_utc_and_freshness_is_measured(spark, tmp_path):
    text = ("id,seen\n1,2013-01-01T05:00:00-05:00\n2,2013-01-01 10:00:00Z\n3,2013-01-01 05:00:00\n"
            "4,2013-07-01 05:00:00\n5,2013-01-01\n6,2013-01-02T00:30:00 Europe/Paris\n7,2013-01-01T11:00:00+0100\n")
    cfg = validate_config(rule_set="none", reference_time="2013-07-02T00:00:00Z", expectations=[
        {"expect": "type", "column": "seen", "type": "timestamp", "timezone": "America/New_York"},
        {"expect": "freshness", "column": "seen", "max_age_hours": 24},
        {"expect": "in_range", "column": "seen", "min": "2013-01-01T05:00:00", "max": "2013-07-01T09:00:00Z"}])
    res = validate(spark, tmp_path, ingested_csv(spark, tmp_path, text), cfg)
    utc = dt.timezone.utc
    seen = {i: (v if v.tzinfo else v.replace(tzinfo=utc)).astimezone(utc)
            for i, v in ((i, r["seen"]) for i, r in kept_by_id(res).items())}
    assert seen == {"1": dt.datetime(2013, 1, 1, 10, tzinfo=utc), "2": dt.datetime(2013, 1, 1, 10, tzinfo=utc),
                    "3": dt.datetime(2013, 1, 1, 10, tzinfo=utc),  # no zone: America/New_York (EST)
                    "4": dt.datetime(2013, 7, 1, 9, tzinfo=utc),  # ... in summer (EDT)
                    "5": dt.datetime(2013, 1, 1, 5, tzinfo=utc),  # a date: midnight in New York
                    "6": dt.datetime(2013, 1, 1, 23, 30, tzinfo=utc), "7": dt.datetime(2013, 1, 1, 10, tzinfo=utc)}
    assert res.freshness == {"freshness:seen": {"newest": "2013-07-01T09:00:00+00:00",
                                                "reference": "2013-07-02T00:00:00+00:00", "age_hours": 15.0}}
    assert res.rows_quarantined == 0


def test_an_all_null_column_is_reported_and_its_not_null_expectation_quarantines_every_row(spark, tmp_path):
    path = ingested_csv(spark, tmp_path, "id,x,y\n1,,a\n2,,b\n3,,c\n")
    typed = [{"expect": "type", "column": "x", "type": "double"}, {"expect": "in_range", "column": "x", "min": 0}]
    ok = validate(spark, tmp_path, path, validate_config(rule_set="none", expectations=typed))
    assert (ok.all_null_columns, ok.rows_valid) == (["x"], 3)
    cfg = validate_config(rule_set="none", expectations=[*typed, {"expect": "not_null", "column": "x"}])
    with pytest.raises(DataError, match=r"3 of 3 rows \(100\.00%\) were quarantined \(by reason: not_null:x 3\); "
                                        r"expected at most validate\.max_quarantine_share=10\.00%.*no valid rows out "
                                        r"of 3\. All-null column\(s\): \['x'\]\. Inspect (?P<q>\S+quarantine)") as err:
        validate(spark, tmp_path, path, cfg)
    quarantine = err.value.args[0].split("Inspect ")[1].split(" (columns")[0]
    assert sorted((r["id"], r["reason"]) for r in parquet_rows(quarantine)) == [
        ("1", "not_null:x"), ("2", "not_null:x"), ("3", "not_null:x")]


def test_an_empty_table_is_refused_naming_the_table_and_its_source(spark, tmp_path):
    out = tmp_path / "ingest"
    spark.createDataFrame([], "id INT, _corrupt_record STRING").write.parquet(str(out / "flights"))
    with pytest.raises(DataError, match=rf"validate: table 'flights' from {out}/flights has no rows; expected at "
                                        r"least one\. Check the ingest source of 'flights'"):
        validate(spark, tmp_path, str(out), validate_config(rule_set="none"))


def _flight(**changes) -> str:
    row = {"year": "2013", "month": "1", "day": "1", "dep_time": "517", "sched_dep_time": "515", "dep_delay": "2",
           "arr_time": "830", "sched_arr_time": "819", "arr_delay": "11", "carrier": "UA", "flight": "1545",
           "tailnum": "N14228", "origin": "EWR", "dest": "IAH", "air_time": "227", "distance": "1400", "hour": "5",
           "minute": "15", "time_hour": "2013-01-01T10:00:00Z"}
    row.update(changes)
    return ",".join(row.values())


def test_flights_csv_with_malformed_lines_through_the_pipeline_is_accounted_in_the_run_record(sessions, tmp_path):
    """Ingest (declared schema) -> validate with the flights rule set: malformed lines quarantined and counted."""
    from mlops_ray.config import config_from_mapping
    from mlops_ray.home import Home
    from mlops_ray.pipeline import run_pipeline
    from tests.ingest.conftest import FLIGHTS_COLUMNS, FLIGHTS_DDL

    good = [_flight(flight=str(1000 + i)) for i in range(12)]
    bad = {
        "month_out_of_range": _flight(month="13"),  # make_date would fail on it: must not crash the day rule
        "day_out_of_range": _flight(month="2", day="30"),
        "sched_dep_time_not_hhmm": _flight(sched_dep_time="2460"),
        "distance_not_positive": _flight(distance="0"),
        "missing_carrier": _flight(carrier=""),
        "no_outcome": _flight(arr_delay=""),
        "finite:arr_delay": _flight(arr_delay="Infinity"),
    }
    malformed = [_flight(dep_delay="N/A"), _flight(tailnum='"N1422'), _flight() + ",extra field",
                 "2013,1,1,517,515"]
    src = tmp_path / "flights.csv"
    src.write_text("\n".join([",".join(FLIGHTS_COLUMNS), *good, *bad.values(), *malformed]) + "\n")
    cfg = config_from_mapping({
        "engines": {"spark": {"shuffle_partitions": 2}},
        "ingest": {"source": "tables", "tables": {"flights": {"type": "file", "path": str(src), "format": "csv",
                                                              "schema_ddl": FLIGHTS_DDL}}},
        "validate": {"max_quarantine_share": 0.6}})
    home = Home.resolve(tmp_path / "home").ensure()
    record = run_pipeline(cfg, sessions=sessions, home=home, to_stage="validate", release_spark=False)

    st = record["stages"]["validate"]
    out = st["outputs"]
    assert (out["rows_in"], out["rows_valid"], out["rows_quarantined"]) == (23, 12, 11)
    assert out["quarantined"] == {**{k: 1 for k in bad}, "malformed_line": 4}
    assert st["rows"] == {"in": 23, "valid": 12, "quarantined": 11}  # the run record's accounting
    assert out["quarantine_share"] == pytest.approx(10 / 23)  # no_outcome is not bad data
    on_disk = json.loads((home.run_dir(record["run_id"]) / "run.json").read_text())["stages"]["validate"]
    assert on_disk["outputs"]["quarantined"] == out["quarantined"]
    rows = parquet_rows(Path(out["path"]) / "quarantine")
    assert len(rows) == 11 and len(parquet_rows(Path(out["path"]) / "valid")) == 12
    reasons = {(r["reason"], r["reason_column"], r["reason_value"]) for r in rows}
    assert {("month_out_of_range", "month", "13"), ("day_out_of_range", "day", "30"),
            ("sched_dep_time_not_hhmm", "sched_dep_time", "2460"), ("distance_not_positive", "distance", "0.0"),
            ("missing_carrier", "carrier", None), ("no_outcome", "arr_delay", None),
            ("finite:arr_delay", "arr_delay", "Infinity")} < reasons
    assert sorted(r["reason_value"] for r in rows if r["reason"] == "malformed_line") == sorted(malformed)


def test_an_empty_source_is_refused_before_any_stage_runs(sessions, tmp_path):
    from mlops_ray.config import config_from_mapping
    from mlops_ray.errors import DataError
    from mlops_ray.home import Home
    from mlops_ray.pipeline import run_pipeline

    src = tmp_path / "flights.csv"
    src.write_text("year,month\n\n")  # a header and no row
    cfg = config_from_mapping({"ingest": {"source": "tables", "tables": {"flights": {
        "type": "file", "path": str(src), "format": "csv", "schema_ddl": "year INT, month INT"}}}})
    home = Home.resolve(tmp_path / "home").ensure()
    with pytest.raises(DataError, match=rf"pre-flight: the main table 'flights' has no rows: its csv source {src} "
                                        r"holds only empty or header-only files\. No stage was run"):
        run_pipeline(cfg, sessions=sessions, home=home, to_stage="validate", release_spark=False)
    assert not list(home.runs_dir().glob("*/run.json"))  # nothing ran, nothing recorded


def test_an_empty_remote_source_fails_at_ingest_before_any_later_stage(sessions, tmp_path):
    """What pre-flight cannot see cheaply (here a gzip file) is refused by ingest, the first stage."""
    import gzip

    from mlops_ray.config import config_from_mapping
    from mlops_ray.errors import StageError
    from mlops_ray.home import Home
    from mlops_ray.pipeline import run_pipeline

    src = tmp_path / "flights.csv.gz"
    src.write_bytes(gzip.compress(b"year,month\n"))
    cfg = config_from_mapping({"ingest": {"source": "tables", "tables": {"flights": {
        "type": "file", "path": str(src), "format": "csv", "schema_ddl": "year INT, month INT"}}}})
    home = Home.resolve(tmp_path / "home").ensure()
    with pytest.raises(StageError, match=rf"Stage 'ingest' .* DataError: ingest: table 'flights': the csv source "
                                         rf"{src} has no rows \(empty or header-only files\)"):
        run_pipeline(cfg, sessions=sessions, home=home, to_stage="validate", release_spark=False)
    run = json.loads(next(home.runs_dir().glob("*/run.json")).read_text())
    assert list(run["stages"]) == ["ingest"] and run["stages"]["ingest"]["status"] == "failed"
