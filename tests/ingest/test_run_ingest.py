"""run_ingest with `source: tables`: every source type into the usual layout, which validate reads as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlops_ray.config import ValidateConfig, config_from_mapping
from mlops_ray.errors import DataError
from mlops_ray.home import Home
from mlops_ray.ingest import PLANES_DDL, WEATHER_DDL, run_ingest
from tests.ingest.conftest import (FLIGHTS_COLUMNS, FLIGHTS_DDL, READER_PASSWORD, READER_USER, flights_records,
                                   package_data)

pytestmark = pytest.mark.timeout(300)


def planes_records() -> list[dict]:
    import pandas as pd

    df = pd.read_csv(package_data("planes.csv"), na_values=["NA"], keep_default_na=False,
                     dtype={"year": "Int64", "engines": "Int64", "seats": "Int64", "speed": "float64"})
    return json.loads(df.to_json(orient="records"))


def cursor_pages(records: list[dict], size: int):
    def route(query, n):
        start = int(query.get("after", 0))
        end = start + size
        return 200, {"planes": records[start:end], "next_after": end if end < len(records) else None}
    return route


def ingest_cfg(tables: dict, **kw):
    return config_from_mapping({"ingest": {"source": "tables", "tables": tables, **kw}}).ingest


def test_every_source_type_lands_in_the_usual_layout_and_validates(spark, flights_db, api, tmp_path, monkeypatch):
    from pyspark.sql import functions as F

    from mlops_ray.preprocess.derive import spark_planes_lookup, spark_weather_lookup
    from mlops_ray.validate import run_validate

    monkeypatch.setenv("TEST_PGUSER", READER_USER)
    (tmp_path / "pg_password").write_text(READER_PASSWORD)
    planes = planes_records()
    api.routes["/planes"] = cursor_pages(planes, 1000)
    airlines = tmp_path / "airlines"
    airlines.mkdir()
    (airlines / "part-0.json").write_text("\n".join(json.dumps({"carrier": c, "name": n}) for c, n in
                                                    [("UA", "United Air Lines Inc."), ("B6", "JetBlue Airways")]))
    cfg = ingest_cfg({
        "flights": {"type": "jdbc", "url": flights_db.jdbc_url("flights"),
                    "query": "SELECT * FROM flights WHERE month = 1", "partition_column": "day", "lower_bound": 1,
                    "upper_bound": 32, "num_partitions": 3, "user_env": "TEST_PGUSER",
                    "password_file": str(tmp_path / "pg_password")},
        "weather": {"type": "file", "path": str(package_data("weather.csv")), "format": "csv",
                    "schema_ddl": WEATHER_DDL, "null_value": "NA"},
        "planes": {"type": "http", "url": api.url("/planes"), "pagination": "cursor", "cursor_param": "after",
                   "records_path": "planes", "next_path": "next_after", "schema_ddl": PLANES_DDL},
        "airlines": {"type": "file", "path": airlines.as_uri(), "format": "json",
                     "schema_ddl": "carrier STRING, name STRING"},
    })
    home = Home.resolve(tmp_path / "home").ensure()
    res = run_ingest(cfg, lambda: spark, home)
    assert res.rows == {"flights": 27_004, "weather": 26_115, "planes": 3_322, "airlines": 2}
    assert not res.cache_hit
    out = Path(res.path)
    assert out.parent == home.root / "cache" / "ingest"
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "airlines", "counts.json", "flights", "planes",
                                                     "weather"]
    assert json.loads((out / "counts.json").read_text()) == res.rows
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging left behind

    flights = spark.read.parquet(str(out / "flights"))
    assert flights.columns == [*FLIGHTS_COLUMNS, "_corrupt_record"]
    assert flights.filter(F.col("_corrupt_record").isNotNull()).count() == 0
    # the lookups preprocess builds: one row per origin and hour, one per tail number
    assert spark_weather_lookup(spark.read.parquet(str(out / "weather"))).count() == 26_115
    assert spark_planes_lookup(spark.read.parquet(str(out / "planes"))).count() == 3_322

    val = run_validate(ValidateConfig(), lambda: spark, res.path, res.key, home)
    assert val.rows_in == 27_004 and val.rows_valid + sum(val.quarantined.values()) == 27_004
    assert val.rows_valid > 26_000


def test_remote_sources_are_cached_by_content(spark, api, tmp_path):
    """Re-reading an unchanged API reuses the entry (same key); a changed answer makes a new one."""
    records = flights_records(120)
    api.routes["/flights"] = lambda q, n: (200, {"items": records})
    cfg = ingest_cfg({"flights": {"type": "http", "url": api.url("/flights"), "records_path": "items",
                                  "schema_ddl": FLIGHTS_DDL}})
    home = Home.resolve(tmp_path / "home").ensure()
    first = run_ingest(cfg, lambda: spark, home)
    again = run_ingest(cfg, lambda: spark, home)
    assert (first.cache_hit, again.cache_hit, again.key) == (False, True, first.key)
    assert api.hits["/flights"] == 2  # a remote source is read each run: only its content tells
    records[7] = {**records[7], "dep_delay": (records[7]["dep_delay"] or 0) + 1}
    changed = run_ingest(cfg, lambda: spark, home)
    assert not changed.cache_hit and changed.key != first.key and changed.rows == {"flights": 120}


def test_local_files_hit_the_cache_without_starting_spark(spark, tmp_path):
    src = tmp_path / "flights.csv"
    rows = [",".join(FLIGHTS_COLUMNS)] + ["2013,1,1,517,515,2,830,819,11,UA,1545,N14228,EWR,IAH,227,1400,5,15,"
                                          "2013-01-01T10:00:00Z"] * 3
    src.write_text("\n".join(rows) + "\n")
    cfg = ingest_cfg({"flights": {"type": "file", "path": str(src), "format": "csv", "schema_ddl": FLIGHTS_DDL}})
    home = Home.resolve(tmp_path / "home").ensure()
    first = run_ingest(cfg, lambda: spark, home)

    def no_spark():
        raise AssertionError("Spark was started for a cached local-file ingest")

    again = run_ingest(cfg, no_spark, home)
    assert (first.cache_hit, again.cache_hit, again.key, again.rows) == (False, True, first.key, {"flights": 3})
    src.write_text("\n".join(rows[:2]) + "\n")
    assert run_ingest(cfg, lambda: spark, home).rows == {"flights": 1}


def test_an_empty_flights_table_is_refused(spark, api, tmp_path):
    api.routes["/none"] = lambda q, n: (200, [])
    cfg = ingest_cfg({"flights": {"type": "http", "url": api.url("/none"), "schema_ddl": FLIGHTS_DDL}})
    with pytest.raises(DataError, match=r"the main table 'flights' from its http source has no rows; expected at least one"):
        run_ingest(cfg, lambda: spark, Home.resolve(tmp_path / "home").ensure())


def test_sampling_applies_to_a_tables_flights_source(spark, api, tmp_path):
    api.routes["/flights"] = lambda q, n: (200, flights_records(400))
    cfg = ingest_cfg({"flights": {"type": "http", "url": api.url("/flights"), "schema_ddl": FLIGHTS_DDL}},
                     sample_fraction=0.25)
    n = run_ingest(cfg, lambda: spark, Home.resolve(tmp_path / "home").ensure()).rows["flights"]
    assert 40 < n < 160
