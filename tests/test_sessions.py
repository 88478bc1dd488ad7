"""How Sessions builds its SparkSession for each accepted master form (no engine started)."""

from __future__ import annotations

from mlops_ray.config import SparkConfig
from mlops_ray.sessions import spark_session_plan


def test_local_master_binds_to_loopback_and_starts_a_jvm_here():
    plan = spark_session_plan(SparkConfig(master="local[*]", shuffle_partitions=3), ("/jars/pg.jar",))
    assert (plan.master, plan.remote, plan.needs_java) == ("local[*]", None, True)
    assert plan.conf["spark.driver.bindAddress"] == plan.conf["spark.driver.host"] == "127.0.0.1"
    assert plan.conf["spark.jars"] == "/jars/pg.jar"
    assert plan.conf["spark.sql.shuffle.partitions"] == plan.conf["spark.default.parallelism"] == "3"
    assert plan.conf["spark.sql.session.timeZone"] == "UTC"


def test_standalone_master_leaves_the_driver_address_to_spark_unless_configured():
    plan = spark_session_plan(SparkConfig(master="spark://10.0.0.5:7077"))
    assert (plan.master, plan.remote, plan.needs_java) == ("spark://10.0.0.5:7077", None, True)
    assert "spark.driver.host" not in plan.conf and "spark.driver.bindAddress" not in plan.conf
    plan = spark_session_plan(SparkConfig(master="spark://127.0.0.1:7077", driver_host="127.0.0.1"))
    assert plan.conf["spark.driver.host"] == "127.0.0.1"


def test_connect_master_builds_a_remote_client_with_runtime_sql_settings_only():
    plan = spark_session_plan(SparkConfig(master="sc://127.0.0.1:15002", driver_memory="8g", shuffle_partitions=6),
                              ("/jars/pg.jar",))
    assert (plan.remote, plan.master, plan.needs_java) == ("sc://127.0.0.1:15002", None, False)
    assert plan.conf == {"spark.sql.shuffle.partitions": "6", "spark.sql.session.timeZone": "UTC",
                         "spark.sql.execution.arrow.pyspark.enabled": "true"}
