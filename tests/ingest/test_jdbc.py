"""SQL through Spark JDBC against a real PostgreSQL server holding the real flights table."""

from __future__ import annotations

import os

import pytest

from mlops_ray.config import JdbcSourceConfig
from mlops_ray.errors import DataError, EnvironmentSetupError, SourceUnavailableError
from mlops_ray.ingest.jdbc import jdbc_frame, jdbc_options
from tests.conftest import free_port
from tests.ingest.conftest import (FLIGHTS_COLUMNS, FLIGHTS_DDL, FLIGHTS_ROWS, READER_PASSWORD, READER_USER)

pytestmark = pytest.mark.timeout(300)


def jdbc(server, **kw) -> JdbcSourceConfig:
    return JdbcSourceConfig(type="jdbc", url=server.jdbc_url("flights"), **kw)


def count_and_checksum(df) -> tuple[int, int]:
    """Rows and the sum of 64-bit hashes of each row's values (nulls spelled out): order-independent."""
    from pyspark.sql import functions as F

    row = F.concat_ws("|", *[F.coalesce(F.col(c).cast("string"), F.lit("<null>")) for c in FLIGHTS_COLUMNS])
    n, total = df.select(F.count(F.lit(1)), F.sum(F.xxhash64(row).cast("decimal(38,0)"))).first()
    return n, int(total)


@pytest.fixture
def reader_env(monkeypatch):
    monkeypatch.setenv("TEST_PGUSER", READER_USER)
    monkeypatch.setenv("TEST_PGPASSWORD", READER_PASSWORD)
    return {"user_env": "TEST_PGUSER", "password_env": "TEST_PGPASSWORD"}


def test_partitioned_read_returns_exactly_the_package_table(spark, flights_db, flights_csv, reader_env):
    from pyspark.sql import functions as F

    src = jdbc(flights_db, table="flights", partition_column="month", lower_bound=1, upper_bound=13,
               num_partitions=4, fetch_size_rows=5_000, **reader_env)
    df = jdbc_frame(spark, "flights", src)
    assert df.rdd.getNumPartitions() == 4
    per_partition = {r[0]: r[1] for r in df.groupBy(F.spark_partition_id()).count().collect()}
    assert sorted(per_partition) == [0, 1, 2, 3] and min(per_partition.values()) > 50_000  # really split by month
    assert df.columns == [*FLIGHTS_COLUMNS, "_corrupt_record"]
    assert df.schema.simpleString().startswith("struct<year:int,month:int,day:int,dep_time:int,")

    package = spark.read.option("header", True).option("nullValue", "NA").schema(FLIGHTS_DDL).csv(str(flights_csv))
    got, want = count_and_checksum(df), count_and_checksum(package)
    assert got[0] == FLIGHTS_ROWS
    assert got == want


def test_the_checksum_sees_one_changed_value(spark, flights_db, reader_env):
    """The comparison above is not vacuous: one delay off by a minute (the first flight) changes the checksum."""
    part = {"partition_column": "day", "lower_bound": 1, "upper_bound": 32, "num_partitions": 3, **reader_env}
    src = jdbc(flights_db, query="SELECT * FROM flights WHERE month = 1", **part)
    shifted = jdbc(flights_db, query=(
        "SELECT year, month, day, dep_time, sched_dep_time, dep_delay + (CASE WHEN day = 1 AND carrier = 'UA' "
        "AND flight = 1545 THEN 1 ELSE 0 END) AS dep_delay, arr_time, sched_arr_time, arr_delay, carrier, flight, "
        "tailnum, origin, dest, air_time, distance, hour, minute, time_hour FROM flights WHERE month = 1"), **part)
    a, b = jdbc_frame(spark, "flights", src), jdbc_frame(spark, "flights", shifted)
    assert a.rdd.getNumPartitions() == b.rdd.getNumPartitions() == 3
    ca, cb = count_and_checksum(a), count_and_checksum(b)
    assert ca[0] == cb[0] == 27_004
    assert ca[1] != cb[1]


def test_credentials_come_from_a_secrets_file(spark, flights_db, tmp_path, monkeypatch):
    (tmp_path / "user").write_text(READER_USER + "\n")
    (tmp_path / "password").write_text(READER_PASSWORD + "\n")
    src = jdbc(flights_db, query="SELECT carrier, count(*) AS n FROM flights GROUP BY carrier",
               user_file=str(tmp_path / "user"), password_file=str(tmp_path / "password"))
    rows = {r["carrier"]: r["n"] for r in jdbc_frame(spark, "flights", src).collect()}
    assert len(rows) == 16 and sum(rows.values()) == FLIGHTS_ROWS


def test_a_wrong_password_is_refused_by_the_server(spark, flights_db, monkeypatch):
    """The reader role really needs its password: a wrong one is a clear error, not an empty table."""
    monkeypatch.setenv("TEST_PGUSER", READER_USER)
    monkeypatch.setenv("TEST_PGPASSWORD", "wrong")
    src = jdbc(flights_db, table="flights", user_env="TEST_PGUSER", password_env="TEST_PGPASSWORD")
    with pytest.raises(DataError, match=r"table 'flights' from jdbc:postgresql://127\.0\.0\.1:\d+/flights \(table "
                                        r"flights\) failed: .*password authentication failed for user"):
        jdbc_frame(spark, "flights", src)


def test_options_hold_partitioning_fetch_size_and_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("MY_PW", "pw from env")
    src = JdbcSourceConfig(type="jdbc", url="jdbc:postgresql://db:5432/x", query="SELECT 1 AS a",
                           partition_column="a", lower_bound=0, upper_bound=100, num_partitions=8,
                           fetch_size_rows=123, password_env="MY_PW")
    opts = jdbc_options("t", src)
    assert opts["dbtable"] == "(SELECT 1 AS a) AS _mlops_ray_query"
    assert {k: opts[k] for k in ("partitionColumn", "lowerBound", "upperBound", "numPartitions", "fetchsize")} == {
        "partitionColumn": "a", "lowerBound": "0", "upperBound": "100", "numPartitions": "8", "fetchsize": "123"}
    assert opts["password"] == "pw from env" and "user" not in opts


@pytest.mark.parametrize("kw, match", [
    ({"password_env": "MLOPS_RAY_TEST_UNSET_PW"},
     r"ingest\.tables\.flights\.password comes from environment variable MLOPS_RAY_TEST_UNSET_PW, which is not set"),
    ({"user_file": "/nonexistent/pg_user"},
     r"ingest\.tables\.flights\.user comes from file /nonexistent/pg_user, which cannot be read"),
])
def test_a_missing_secret_names_its_variable_or_file(kw, match):
    os.environ.pop("MLOPS_RAY_TEST_UNSET_PW", None)
    src = JdbcSourceConfig(type="jdbc", url="jdbc:postgresql://db:5432/x", table="t", **kw)
    with pytest.raises(EnvironmentSetupError, match=match):
        jdbc_options("flights", src)


def test_a_server_that_does_not_answer_is_source_unavailable(spark):
    src = JdbcSourceConfig(type="jdbc", url=f"jdbc:postgresql://127.0.0.1:{free_port()}/flights", table="flights")
    with pytest.raises(SourceUnavailableError, match=r"the database did not answer: .*Connection.*refused"):
        jdbc_frame(spark, "flights", src)


def test_a_login_without_a_password_is_a_data_error_not_an_outage(spark, flights_db, monkeypatch):
    monkeypatch.setenv("TEST_PGUSER", READER_USER)
    src = jdbc(flights_db, table="flights", user_env="TEST_PGUSER")
    with pytest.raises(DataError, match=r"failed: The server requested SCRAM-based authentication, but no password "
                                        r"was provided$"):
        jdbc_frame(spark, "flights", src)


def test_an_unknown_table_is_a_data_error(spark, flights_db, reader_env):
    src = jdbc(flights_db, table="no_such_table", **reader_env)
    with pytest.raises(DataError, match=r'\(table no_such_table\) failed: .*relation "no_such_table" does not exist'):
        jdbc_frame(spark, "flights", src)


def test_a_driver_class_missing_from_the_classpath_says_how_to_add_it(spark, flights_db, reader_env):
    src = jdbc(flights_db, table="flights", driver_class="org.example.NoSuchDriver", **reader_env)
    with pytest.raises(EnvironmentSetupError, match=r"JDBC driver class org\.example\.NoSuchDriver was not found on "
                                                    r"the SparkSession's classpath \(spark\.jars = .*postgresql\.jar"):
        jdbc_frame(spark, "flights", src)


def test_custom_schema_overrides_the_driver_types(spark, flights_db, reader_env):
    src = jdbc(flights_db, query="SELECT flight, distance FROM flights WHERE month = 1 AND day = 1",
               schema_ddl="flight BIGINT, distance DECIMAL(10, 1)", **reader_env)
    df = jdbc_frame(spark, "flights", src)
    assert dict(df.dtypes) == {"flight": "bigint", "distance": "decimal(10,1)", "_corrupt_record": "string"}
    assert df.count() == 842


def test_sessions_refuse_a_jar_that_does_not_exist(tmp_path):
    from mlops_ray.config import EnginesConfig
    from mlops_ray.sessions import Sessions

    s = Sessions(EnginesConfig(), extra_jars=(str(tmp_path / "postgresql.jar"),))
    with pytest.raises(EnvironmentSetupError, match=r"Spark jar\(s\) \[.*postgresql\.jar'\] do not exist.*"
                                                    r"apt-get install -y libpostgresql-jdbc-java"):
        s.spark
