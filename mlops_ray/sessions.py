"""The only code that creates a SparkSession or connects to Ray.

Entry points (``cli.py``, ``jobs/*.py``, ``run_pipeline`` when called without sessions)
create a :class:`Sessions` and hand it down; stages receive engines, never create them.
Both engines start lazily, on first use, and :meth:`Sessions.close` stops what was started
here (a Ray cluster we merely connected to is left running).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_ray.config import EnginesConfig, SparkConfig
from mlops_ray.errors import EnvironmentSetupError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

JAVA_HELP = ("Apache Spark 4 needs Java 17 or newer. Install it with "
             "`apt-get install -y openjdk-17-jre-headless` (Debian/Ubuntu) or `brew install openjdk@17` "
             "(macOS), or point JAVA_HOME at a JDK 17+.")


def java_major_version() -> int | None:
    """Major version of the ``java`` on PATH (or in JAVA_HOME), None when there is none."""
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def check_java() -> None:
    """Raise EnvironmentSetupError unless Java 17+ is available."""
    v = java_major_version()
    if v is None:
        raise EnvironmentSetupError(f"No Java found on PATH or in JAVA_HOME. {JAVA_HELP}")
    if v < 17:
        raise EnvironmentSetupError(f"Java {v} found, Java 17+ expected. {JAVA_HELP}")


@dataclass(frozen=True)
class SparkSessionPlan:
    """How :class:`Sessions` builds the SparkSession for one ``engines.spark`` slice (nothing started).

    Attributes:
        remote: the Spark Connect URL (``sc://...``) for ``SparkSession.builder.remote``; None otherwise.
        master: the master URL (``local[...]`` or ``spark://...``) for ``builder.master``; None for Connect.
        conf: settings passed with ``builder.config``. A Connect client passes only runtime SQL settings:
            driver memory, UI, host and jars belong to the server (cluster/spark/start-connect.sh).
        needs_java: whether this process starts a JVM (not for a Connect client).
    """

    remote: str | None
    master: str | None
    conf: dict[str, str]
    needs_java: bool


def spark_session_plan(sc: SparkConfig, extra_jars: tuple[str, ...] = ()) -> SparkSessionPlan:
    """The builder settings for ``sc``: local mode, a standalone cluster, or a Spark Connect server."""
    sql = {"spark.sql.shuffle.partitions": str(sc.shuffle_partitions), "spark.sql.session.timeZone": "UTC",
           "spark.sql.execution.arrow.pyspark.enabled": "true"}
    if sc.is_connect:
        return SparkSessionPlan(remote=sc.master, master=None, conf=sql, needs_java=False)
    conf = {"spark.app.name": sc.app_name, "spark.driver.memory": sc.driver_memory,
            "spark.default.parallelism": str(sc.shuffle_partitions), **sql,
            "spark.ui.enabled": str(sc.ui_enabled).lower(), "spark.ui.showConsoleProgress": "false"}
    driver_host = sc.driver_host or ("127.0.0.1" if sc.is_local else None)
    if driver_host:
        conf["spark.driver.host"] = driver_host
    if extra_jars:
        conf["spark.jars"] = ",".join(os.path.abspath(j) for j in extra_jars)
    if sc.is_local:
        conf["spark.driver.bindAddress"] = "127.0.0.1"
    return SparkSessionPlan(remote=None, master=sc.master, conf=conf, needs_java=True)


def _port_in_use(port: int) -> bool:
    """True when a process listens on ``port`` (any interface): binding it here fails."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed socket in TIME_WAIT is no listener
        try:
            s.bind(("", port))
        except OSError:
            return True
    return False


def _check_local_ray_ports(rc) -> None:
    """Refuse to start a local Ray whose fixed ports are taken, before Ray tries (it would fail minutes later,
    as "node timed out during startup" / "GCS has become overloaded").

    Raises:
        EnvironmentSetupError: naming the config key and port, the Ray already running on this machine (when
            one answers) and the three ways out.
    """
    taken = [f"engines.ray.{key} {port}" for key, port in
             (("dashboard_port", rc.dashboard_port if rc.include_dashboard else None),
              ("metrics_export_port", rc.metrics_export_port)) if port is not None and _port_in_use(port)]
    if not taken:
        return
    from mlops_ray.serve.batch import running_local_ray

    running = running_local_ray()
    where = f"a Ray already runs on this machine at {running}" if running else "another process listens there"
    join = f"RAY_ADDRESS={running}" if running else "RAY_ADDRESS=<host:port of that Ray>"
    raise EnvironmentSetupError(
        f"cannot start a local Ray: {' and '.join(taken)} already in use ({where}; e.g. one left by "
        f"`run --keep-serving` or `ray start`). Join it with {join} (or engines.ray.address), stop it with "
        f"`ray stop`, or set free ports in engines.ray.")


class Sessions:
    """Lazily started Spark and Ray engines for one entry point.

    Args:
        engines: the ``engines`` slice of the config.
        ray_runtime_env: runtime environment passed to ``ray.init`` (e.g. MLOPS_RAY_HOME).
        extra_jars: jar files put on the SparkSession's classpath (``spark.jars``) when it starts, e.g.
            ``cfg.ingest.spark_jars()`` (JDBC drivers); a session's jars are fixed once it runs. With a
            Spark Connect master the jars must be on the server instead (``start-connect.sh --conf spark.jars=...``).
    """

    def __init__(self, engines: EnginesConfig, ray_runtime_env: dict | None = None,
                 extra_jars: tuple[str, ...] | list[str] = ()):
        self.engines = engines
        self.ray_runtime_env = ray_runtime_env or {}
        self.extra_jars = tuple(extra_jars)
        self._spark: SparkSession | None = None
        self._ray_started_here = False
        self._ray_connected = False

    # ------------------------------------------------------------------ Spark
    @property
    def spark(self) -> "SparkSession":
        """The SparkSession, started on first access (UTC session time zone, few shuffle partitions).

        ``local[...]`` and ``spark://`` masters start a driver JVM in this process; an ``sc://`` master
        makes this process a Spark Connect client of that server.

        Raises:
            EnvironmentSetupError: no Java 17+, a jar of ``extra_jars`` does not exist, or (``sc://``) pyspark's
                Connect client packages are not installed.
        """
        if self._spark is None:
            sc = self.engines.spark
            plan = spark_session_plan(sc, () if sc.is_connect else self.extra_jars)
            missing = [j for j in self.extra_jars if not os.path.isfile(j)] if plan.needs_java else []
            if missing:
                raise EnvironmentSetupError(
                    f"Spark jar(s) {missing} do not exist; the config names them (ingest.tables.<table>.driver_jar). "
                    "Install the driver (PostgreSQL: `apt-get install -y libpostgresql-jdbc-java` puts it at "
                    "/usr/share/java/postgresql.jar) or fix the path.")
            if plan.needs_java:
                check_java()
            elif self.extra_jars:
                logger.warning("Spark Connect (%s): jars %s must be on the server's classpath "
                               "(start-connect.sh --conf spark.jars=...); the client cannot add them",
                               sc.master, list(self.extra_jars))
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            if sc.is_local:
                os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
            import warnings

            warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
            from pyspark.sql import SparkSession

            logger.info("starting Spark (%s, driver memory %s)", sc.master, sc.driver_memory)
            builder = SparkSession.builder
            builder = builder.remote(plan.remote) if plan.remote else builder.master(plan.master)
            for k, v in plan.conf.items():
                builder = builder.config(k, v)
            try:
                self._spark = builder.getOrCreate()
            except ImportError as exc:  # pyspark's Connect client needs extras (grpcio-status, zstandard, ...)
                if plan.needs_java:
                    raise
                import pyspark

                reason = str(exc).rstrip(".")
                raise EnvironmentSetupError(
                    f"A Spark Connect master ({sc.master}) needs pyspark's Connect client packages: {reason}. "
                    f"Install them with `pip install 'mlops_ray[connect]'` (or `pip install 'pyspark[connect]=="
                    f"{pyspark.__version__}'`).") from exc
            if plan.needs_java:
                self._spark.sparkContext.setLogLevel("ERROR")
        return self._spark

    def stop_spark(self) -> None:
        """Stop the SparkSession and its JVM, if this object started one."""
        if self._spark is None:
            return
        from pyspark import SparkContext

        self._spark.stop()
        if self.engines.spark.is_connect:  # a Connect client has no JVM of its own
            self._spark = None
            return
        gateway = SparkContext._gateway
        if gateway is not None:
            proc = getattr(gateway, "proc", None)
            try:
                gateway.shutdown()
            finally:
                if proc is not None:
                    proc.stdin.close() if proc.stdin else None
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            SparkContext._gateway = None
            SparkContext._jvm = None
        self._spark = None

    # -------------------------------------------------------------------- Ray
    def ray(self) -> Any:
        """The ``ray`` module, connected: to ``engines.ray.address``/RAY_ADDRESS, or a new local Ray."""
        import ray

        if ray.is_initialized():
            return ray
        rc = self.engines.ray
        address = rc.address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"runtime_env": self.ray_runtime_env or None, "logging_level": logging.WARNING,
                                  "log_to_driver": logging.getLogger("mlops_ray").getEffectiveLevel() <= logging.INFO}
        if address:
            logger.info("connecting to Ray at %s", address)
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            _check_local_ray_ports(rc)
            if rc.metrics_report_interval_ms is not None:  # read from the environment by every Ray process
                os.environ["RAY_metrics_report_interval_ms"] = str(rc.metrics_report_interval_ms)
            logger.info("starting a local Ray")
            ray.init(num_cpus=rc.num_cpus, object_store_memory=rc.object_store_memory_bytes,
                     include_dashboard=rc.include_dashboard, dashboard_host="127.0.0.1",
                     dashboard_port=rc.dashboard_port, _metrics_export_port=rc.metrics_export_port, **kwargs)
            self._ray_started_here = True
        self._ray_connected = True
        return ray

    def shutdown_ray(self) -> None:
        """Disconnect from Ray; a local Ray started here is stopped with all its processes."""
        if not self._ray_connected:
            return
        import ray

        # A local Ray started here goes down with every actor it holds (Serve included).
        ray.shutdown()
        self._ray_connected = False
        self._ray_started_here = False

    @property
    def ray_is_local(self) -> bool:
        """True when the Ray in use was started by this object (not a cluster we joined)."""
        return self._ray_started_here

    def close(self, keep_ray: bool = False) -> None:
        """Stop Spark; stop Ray unless ``keep_ray``."""
        self.stop_spark()
        if not keep_ray:
            self.shutdown_ray()

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
