"""SQL tables through Spark JDBC, read in parallel partitions.

The driver jar is put on the SparkSession's classpath when the session starts
(``IngestConfig.spark_jars`` -> ``Sessions(extra_jars=...)`` -> ``spark.jars``). User and password
come from the environment or a secrets file (:mod:`mlops_ray.ingest.secrets`), never from the YAML.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlops_ray.config import JdbcSourceConfig
from mlops_ray.errors import DataError, EnvironmentSetupError, SourceUnavailableError
from mlops_ray.ingest.files import CORRUPT_RECORD, declared_schema
from mlops_ray.ingest.secrets import secret_value

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

#: SQLSTATEs of a database that did not answer: 08000/08001/08003/08006 connection exceptions (not 08004, a
#: rejected login) and 57P01-57P03 (shutting down, cannot connect now).
_UNAVAILABLE_SQLSTATES = ("08000", "08001", "08003", "08006", "57P")


def jdbc_options(table: str, src: JdbcSourceConfig) -> dict[str, str]:
    """Spark JDBC reader options for one table, credentials resolved from the environment or files.

    A ``query`` becomes the subquery ``(query) AS _mlops_ray_query`` so that it can be partitioned
    (Spark refuses ``query`` together with ``partitionColumn``).

    Raises:
        EnvironmentSetupError: a configured user/password variable or file is missing.
    """
    where = f"ingest.tables.{table}"
    dbtable = src.table if src.table is not None else f"({src.query}) AS _mlops_ray_query"
    opts = {"url": src.url, "dbtable": dbtable, "driver": src.driver_class,
            "fetchsize": str(src.fetch_size_rows), "queryTimeout": str(src.query_timeout_s),
            "numPartitions": str(src.num_partitions)}
    if src.partition_column is not None:
        opts.update(partitionColumn=src.partition_column, lowerBound=str(src.lower_bound),
                    upperBound=str(src.upper_bound))
    user = secret_value(f"{where}.user", src.user_env, src.user_file)
    password = secret_value(f"{where}.password", src.password_env, src.password_file)
    if user is not None:
        opts["user"] = user
    if password is not None:
        opts["password"] = password
    return opts


def _java_causes(exc: BaseException) -> list[str]:
    """The Java exception chain behind a Py4J/captured error as "class|SQLSTATE|message", outermost first."""
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    out = []
    while java is not None and len(out) < 20:
        try:
            state = java.getSQLState()
        except Exception:  # noqa: BLE001 - not an SQLException (Py4J has no hasattr for Java methods)
            state = None
        out.append(f"{java.getClass().getName()}|{state or ''}|{java.getMessage()}")
        java = java.getCause()
    return out


def jdbc_frame(spark: "SparkSession", table: str, src: JdbcSourceConfig) -> "DataFrame":
    """One table from a database: ``num_partitions`` parallel range reads on ``partition_column``.

    Returns:
        DataFrame with the database's columns (types per Spark's JDBC mapping, overridden by ``schema_ddl``)
        plus an all-null ``_corrupt_record`` column; ``rdd.getNumPartitions() == num_partitions``.

    Raises:
        EnvironmentSetupError: a secret is missing, or the driver class is not on the session's classpath.
        SourceUnavailableError: the database did not answer (connection refused, timeout, shutting down).
        DataError: the database answered with an error (bad credentials, unknown table or column, bad query).
        ConfigError: ``schema_ddl`` does not parse.
    """
    from pyspark.sql import functions as F

    opts = jdbc_options(table, src)
    reader = spark.read.format("jdbc").options(**opts)
    if src.schema_ddl:
        declared_schema(src.schema_ddl, f"ingest.tables.{table}.schema_ddl")  # a clear error before the JVM's
        reader = reader.option("customSchema", src.schema_ddl)
    what = f"ingest: table '{table}' from {src.url} ({'table ' + src.table if src.table else 'query'})"
    try:
        df = reader.load()  # connects once for the schema; the partitions are read when an action runs
    except Exception as exc:  # noqa: BLE001 - re-raised as one of ours below, or unchanged
        causes = _java_causes(exc)
        text = "\n".join(causes) or str(exc)
        if "ClassNotFoundException" in text or "No suitable driver" in text:
            jars = spark.sparkContext.getConf().get("spark.jars", "")
            raise EnvironmentSetupError(
                f"{what}: JDBC driver class {src.driver_class} was not found on the SparkSession's classpath "
                f"(spark.jars = {jars!r}; this table's driver_jar is {src.driver_jar}). Fix driver_class, or start "
                f"the session with Sessions(cfg.engines, extra_jars=cfg.ingest.spark_jars()) as the CLI does."
            ) from None
        last = causes[-1].split("|", 2) if causes else ["", "", str(exc)]
        message = (last[2] or str(exc).strip().splitlines()[0]).rstrip(".")
        if any(c.split("|")[1].startswith(_UNAVAILABLE_SQLSTATES) for c in causes):
            raise SourceUnavailableError(f"{what}: the database did not answer: {message}. Check that it runs and "
                                         f"that the URL's host and port are right.") from None
        raise DataError(f"{what} failed: {message}") from None
    logger.info("ingest: %s: %d JDBC partitions on %s", table, src.num_partitions, src.partition_column)
    return df.drop(CORRUPT_RECORD).withColumn(CORRUPT_RECORD, F.lit(None).cast("string"))
