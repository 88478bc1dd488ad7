"""File tables through Spark: CSV, Parquet and JSON from local paths or Hadoop-compatible URIs.

Every table read here has a ``_corrupt_record`` string column: for CSV and JSON it holds the
text of a line Spark could not parse into the schema (PERMISSIVE mode keeps the line, its
fields null where they do not fit), for Parquet it is always null. Validate quarantines those
rows; ingest never drops them.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mlops_ray.config import FileSourceConfig
from mlops_ray.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, DataFrameReader, SparkSession
    from pyspark.sql.types import StructType

logger = logging.getLogger(__name__)

#: Column holding the raw text of a line that did not parse (Spark's columnNameOfCorruptRecord).
CORRUPT_RECORD = "_corrupt_record"


def declared_schema(ddl: str, where: str) -> "StructType":
    """A Spark DDL string as a StructType (needs a running SparkSession).

    Raises:
        ConfigError: the DDL does not parse (names ``where``, the config field, and Spark's message).
    """
    from pyspark.errors import PySparkException
    from pyspark.sql.types import StructType

    try:
        return StructType.fromDDL(ddl)
    except (PySparkException, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{where} is not a valid Spark DDL schema ({first}); got {ddl!r}. Expected e.g. "
                          f"'year INT, carrier STRING, distance DOUBLE'.") from None


def with_corrupt_record(schema: "StructType") -> "StructType":
    """``schema`` with a trailing ``_corrupt_record`` string column (moved last when present)."""
    from pyspark.sql.types import StringType, StructField, StructType

    return StructType([f for f in schema.fields if f.name != CORRUPT_RECORD]
                      + [StructField(CORRUPT_RECORD, StringType(), True)])


def is_local_path(path: str) -> bool:
    """True for a plain path or a file:// URI (digestible here); False for s3a://, hdfs://, ..."""
    return urlparse(path).scheme in ("", "file")


def local_files(path: str) -> list[Path]:
    """The files Spark reads for a local ``path`` (a file, a folder or a glob), sorted.

    Hidden files and Spark's own markers (names starting with '.' or '_') are skipped, as Spark skips them.

    Raises:
        DataError: nothing matches the path.
    """
    p = urlparse(path).path if path.startswith("file:") else path
    base = Path(p).expanduser()
    if base.is_dir():
        found = [f for f in base.rglob("*") if f.is_file()
                 and not any(part.startswith((".", "_")) for part in f.relative_to(base).parts)]
    else:
        found = [Path(f) for f in glob.glob(str(base)) if Path(f).is_file()]
    if not found:
        raise DataError(f"ingest: no file matches {path}; expected an existing file, folder or glob. Check the "
                        f"table's path.")
    return sorted(found)


def local_files_digest(path: str) -> str:
    """SHA-256 over the names (relative to the path) and bytes of the files ``local_files`` returns."""
    h = hashlib.sha256()
    files = local_files(path)
    root = Path(path if not path.startswith("file:") else urlparse(path).path).expanduser()
    for f in files:
        h.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
        with f.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _csv_reader(spark: "SparkSession", src: FileSourceConfig) -> "DataFrameReader":
    return (spark.read.option("header", src.header).option("sep", src.delimiter)
            .option("nullValue", src.null_value).option("multiLine", src.multi_line))


def _json_reader(spark: "SparkSession", multi_line: bool) -> "DataFrameReader":
    return spark.read.option("multiLine", multi_line)


def json_schema(reader: "DataFrameReader", data, ddl: str | None, infer: bool, where: str) -> "StructType":
    """Schema to read JSON ``data`` (a path or an RDD of strings) with, ``_corrupt_record`` last.

    Declared (``ddl``) when given; else Spark's inference with real types (``infer``) or with every value a
    string (``primitivesAsString``).
    """
    if ddl:
        return with_corrupt_record(declared_schema(ddl, where))
    return with_corrupt_record(reader.option("primitivesAsString", not infer).json(data).schema)


def files_frame(spark: "SparkSession", table: str, src: FileSourceConfig) -> "DataFrame":
    """One table from files, with its declared (or opted-in inferred) schema plus ``_corrupt_record``.

    Args:
        table: the table's name in ``ingest.tables`` (for messages).

    Returns:
        DataFrame of shape (n_lines, n_columns + 1); malformed CSV/JSON lines are rows with their text in
        ``_corrupt_record``.

    Raises:
        ConfigError: ``schema_ddl`` does not parse.
        DataError: the path matches no file (Spark's "path does not exist").
    """
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    where = f"ingest.tables.{table}.schema_ddl"
    try:
        if src.format == "parquet":
            reader = spark.read
            if src.schema_ddl:
                reader = reader.schema(declared_schema(src.schema_ddl, where))
            df = reader.parquet(src.path)
            return df.drop(CORRUPT_RECORD).withColumn(CORRUPT_RECORD, F.lit(None).cast("string"))
        if src.format == "csv":
            if src.schema_ddl:
                schema = with_corrupt_record(declared_schema(src.schema_ddl, where))
            else:  # header names only, or an inference pass the user opted in to
                schema = with_corrupt_record(_csv_reader(spark, src).option("inferSchema", src.infer_schema)
                                             .csv(src.path).schema)
            return (_csv_reader(spark, src).option("mode", "PERMISSIVE")
                    .option("columnNameOfCorruptRecord", CORRUPT_RECORD).schema(schema).csv(src.path))
        reader = _json_reader(spark, src.multi_line)
        schema = json_schema(reader, src.path, src.schema_ddl, src.infer_schema, where)
        return (_json_reader(spark, src.multi_line).option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT_RECORD).schema(schema).json(src.path))
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise DataError(f"ingest: table '{table}': {src.format} path {src.path} does not exist; expected a "
                            f"file, folder or glob Spark can read. Fix ingest.tables.{table}.path.") from None
        raise
