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


def test_a_local_ray_exports_metrics_at_the_configured_interval(tmp_path):
    """``engines.ray.metrics_report_interval_ms`` reaches every process of the local Ray it starts (a worker
    reads it from Ray's own config), with the variable absent from the environment beforehand."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    code = f"""
import json, os
os.environ.pop("RAY_metrics_report_interval_ms", None)
from mlops_ray.config import EnginesConfig, RayConfig
from mlops_ray.sessions import Sessions

s = Sessions(EnginesConfig(ray=RayConfig(num_cpus=1, include_dashboard=False, metrics_export_port={free_port()},
                                         object_store_memory_bytes=100_000_000, metrics_report_interval_ms=1500)))
ray = s.ray()

@ray.remote
def interval():
    return ray._config.metrics_report_interval_ms()

print(json.dumps({{"driver": ray._config.metrics_report_interval_ms(), "worker": ray.get(interval.remote())}}))
s.close()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"driver": 1500, "worker": 1500}


def test_a_local_ray_is_refused_at_once_when_its_fixed_ports_are_taken():
    import socket

    import pytest

    from mlops_ray.config import RayConfig
    from mlops_ray.errors import EnvironmentSetupError
    from mlops_ray.sessions import _check_local_ray_ports
    from tests.conftest import free_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EnvironmentSetupError, match=rf"engines.ray.metrics_export_port {port} already in use .*"
                                                        r"Join it with RAY_ADDRESS=.*`ray stop`"):
            _check_local_ray_ports(RayConfig(include_dashboard=False, metrics_export_port=port))
        with pytest.raises(EnvironmentSetupError, match=rf"engines.ray.dashboard_port {port} already in use"):
            _check_local_ray_ports(RayConfig(dashboard_port=port, metrics_export_port=None))
        _check_local_ray_ports(RayConfig(dashboard_port=port, include_dashboard=False, metrics_export_port=None))
    _check_local_ray_ports(RayConfig(include_dashboard=False, metrics_export_port=free_port()))  # free: no error
