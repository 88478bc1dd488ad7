"""File tables through Spark: CSV, Parquet and JSON from local paths or Hadoop-compatible URIs.

Every table read here has a ``_corrupt_record`` string column: for CSV and JSON it holds the
text of a line Spark could not parse into the schema (PERMISSIVE mode keeps the line, its
fields null where they do not fit), for Parquet the row as JSON when a value did not survive
the safe cast to the declared schema (else null). Validate quarantines those rows; ingest
never drops them.

Types that change between files (a daily file with ``x`` as int, the next with ``x`` as
string) are caught here, before anything is written: Parquet files carry their own types,
and with ``infer_schema`` each CSV/JSON file is inferred on its own. Without a declared
schema that is a :class:`DataError` naming the column, both types and the files; with
``schema_ddl`` each file is cast to the declared types by :func:`safe_cast`. A table with no
rows is a :class:`DataError` too.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from mlops_ray.config import FileSourceConfig
from mlops_ray.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from pyspark.sql import Column, DataFrame, DataFrameReader, SparkSession
    from pyspark.sql.types import DataType, StructType

logger = logging.getLogger(__name__)

#: Column holding the raw text of a line that did not parse (Spark's columnNameOfCorruptRecord).
CORRUPT_RECORD = "_corrupt_record"

#: A timestamp text that names its own zone: a clock time followed by Z, an offset, UTC/GMT(+offset) or a
#: region id (Java regex, case-insensitive).
ZONE_SUFFIX = (r"(?i)\d:\d{2}(:\d{2}(\.\d+)?)?\s*(z|[+-]\d{1,2}(:?\d{2}){0,2}|(utc|gmt|ut)([+-]\d{1,2}(:?\d{2}){0,2})?"
               r"|[a-z_]+(/[a-z0-9_+-]+)+)$")


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


def _col(name: str) -> "Column":
    from pyspark.sql import functions as F

    return F.col(f"`{name}`")


def timestamp_from_text(text: "Column", timezone: str = "UTC") -> "Column":
    """ISO-8601 text as a UTC instant: a value naming its zone (``Z``, ``-05:00``, ``UTC``, ``Europe/Paris``) keeps
    it, a value without one (``2013-01-01 05:00``, ``2013-01-01``) is read in ``timezone``. Unparseable: null."""
    from pyspark.sql import functions as F

    local = F.date_format(text.try_cast("timestamp_ntz"), "yyyy-MM-dd HH:mm:ss.SSSSSS")
    return (F.when(text.rlike(ZONE_SUFFIX), text.try_cast("timestamp"))
            .otherwise(F.concat(local, F.lit(f" {timezone}")).try_cast("timestamp")))


def safe_cast(value: "Column", source: "DataType", target: "DataType",
              timezone: str = "UTC") -> tuple["Column", "Column"]:
    """``value`` (of type ``source``) cast to ``target``, and a flag that is true where a non-null value was lost.

    The cast value is null where the flag is true. Lost means: the cast gave null (``'N/A'`` to int, ``2**40``
    to int), a fraction was cut (``1.5`` to int), or a finite number overflowed a float. Text and dates become
    timestamps as :func:`timestamp_from_text` reads them (no zone: ``timezone``). Casting to float otherwise loses
    only precision, which is not flagged.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import (DateType, FloatType, IntegralType, NumericType, StringType, TimestampNTZType,
                                   TimestampType)

    if source == target:
        return value, F.lit(False)
    if isinstance(target, TimestampType) and isinstance(source, (StringType, DateType, TimestampNTZType)):
        text = value if isinstance(source, StringType) else F.date_format(value, "yyyy-MM-dd HH:mm:ss.SSSSSS")
        cast = timestamp_from_text(text, timezone)
    else:
        cast = value.try_cast(target)
    lost = value.isNotNull() & cast.isNull()
    if isinstance(source, NumericType) and isinstance(target, IntegralType):
        lost = lost | (value.isNotNull() & (cast.cast("double") != value.cast("double")))
    if isinstance(source, NumericType) and isinstance(target, FloatType):
        inf = F.lit(float("inf"))
        lost = lost | (value.isNotNull() & (F.abs(value.cast("double")) != inf) & (F.abs(cast.cast("double")) == inf))
    return F.when(lost, F.lit(None)).otherwise(cast), lost  # a lost value is never half kept (1.5 as 1)


def _where_file(path: str) -> str:
    """A file as Spark names it (``file:///...``), shown as a local path when it is one."""
    return unquote(urlparse(path).path) if path.startswith("file:") else path


def _drift_message(table: str, column: str, files_by_type: dict[str, list[str]]) -> str:
    ranked = sorted(files_by_type.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    (usual, usual_files), others = ranked[0], ranked[1:]
    odd = "; ".join(f"{t} in {_where_file(fs[0])}" + (f" (and {len(fs) - 1} more file(s))" if len(fs) > 1 else "")
                    for t, fs in others)
    return (f"ingest: table '{table}': column '{column}' changes type between files: {usual} in "
            f"{_where_file(usual_files[0])}" + (f" (and {len(usual_files) - 1} more)" if len(usual_files) > 1 else "")
            + f", but {odd}. Expected one type per column. Declare ingest.tables.{table}.schema_ddl (e.g. "
            f"'{column} {usual.upper()}') to cast every file to it safely: a value that does not convert keeps its "
            f"row, flagged in {CORRUPT_RECORD}, for validate to quarantine.")


def _type_drift(table: str, schemas: list[tuple["StructType", list[str]]]) -> None:
    """Raise DataError for the first column whose type differs between groups of files."""
    by_column: dict[str, dict[str, list[str]]] = {}
    for schema, files in schemas:
        for f in schema.fields:
            if f.name != CORRUPT_RECORD:
                by_column.setdefault(f.name, {}).setdefault(f.dataType.simpleString(), []).extend(files)
    for column, files_by_type in by_column.items():
        if len(files_by_type) > 1:
            raise DataError(_drift_message(table, column, files_by_type))


def parquet_schema_groups(spark: "SparkSession", files: list[str],
                          local: bool | None = None) -> list[tuple["StructType", list[str]]]:
    """Parquet files grouped by their own schema: (Spark schema, files), in first-seen order.

    Args:
        local: read the footers here with pyarrow (milliseconds each; one Spark read per distinct schema);
            None = when every file is local. Otherwise Spark merges all footers in one job, and reads the
            files one by one only when that merge fails (a type differs).
    """
    if len(files) == 1:
        return [(spark.read.parquet(files[0]).schema, files)]
    if local if local is not None else all(is_local_path(f) for f in files):
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_arrow: dict[tuple, list[str]] = {}
        for f in files:
            try:
                schema = pq.read_schema(_where_file(f))
            except (pa.ArrowException, OSError) as exc:
                raise DataError(f"ingest: {_where_file(f)} is not a readable Parquet file ({exc}).") from None
            by_arrow.setdefault(tuple((x.name, str(x.type)) for x in schema), []).append(f)
        return [(spark.read.parquet(fs[0]).schema, fs) for fs in by_arrow.values()]
    try:
        return [(spark.read.option("mergeSchema", "true").parquet(*files).schema, files)]
    except Exception as exc:  # py4j's Py4JJavaError wrapping SparkException [CANNOT_MERGE_SCHEMAS]
        if "CANNOT_MERGE_SCHEMAS" not in str(exc):
            raise
    by_schema: dict[str, tuple[StructType, list[str]]] = {}
    for f in files:
        schema = spark.read.parquet(f).schema
        by_schema.setdefault(schema.simpleString(), (schema, []))[1].append(f)
    return list(by_schema.values())


def _cast_group(spark: "SparkSession", table: str, declared: "StructType", schema: "StructType",
                files: list[str], base_path: str | None) -> "DataFrame":
    """Files that share ``schema``, cast column by column to ``declared``; a row losing a value is flagged."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    cols, lost = [], []
    for field in declared.fields:
        if field.name not in schema.names:
            cols.append(F.lit(None).cast(field.dataType).alias(field.name))
            continue
        value, flag = safe_cast(_col(field.name), schema[field.name].dataType, field.dataType)
        cols.append(value.alias(field.name))
        lost.append(flag)
    kept = [n for n in schema.names if n in declared.names]
    corrupt = (F.when(reduce(lambda a, b: a | b, lost), F.to_json(F.struct(*[_col(n) for n in kept])))
               if lost else F.lit(None)).cast("string")
    reader = spark.read.schema(schema)
    if base_path:
        reader = reader.option("basePath", base_path)
    try:
        return reader.parquet(*files).select(*cols, corrupt.alias(CORRUPT_RECORD))
    except AnalysisException as exc:
        pairs = ", ".join(f"'{f.name}' {schema[f.name].dataType.simpleString()} -> {f.dataType.simpleString()}"
                          for f in declared.fields if f.name in schema.names
                          and schema[f.name].dataType != f.dataType)
        raise DataError(f"ingest: table '{table}': {_where_file(files[0])} holds types that cannot be cast to the "
                        f"declared schema ({pairs}): {str(exc).splitlines()[0]}. Fix ingest.tables.{table}."
                        f"schema_ddl.") from None


def _parquet_frame(spark: "SparkSession", table: str, src: FileSourceConfig, where: str) -> "DataFrame":
    """Parquet files with their types checked across files (see the module docstring)."""
    from pyspark.sql import functions as F

    declared = None
    if src.schema_ddl:
        declared = declared_schema(src.schema_ddl, where)
        declared = type(declared)([f for f in declared.fields if f.name != CORRUPT_RECORD])
    plain = spark.read.parquet(src.path)
    files = plain.inputFiles()
    if declared is None and len(files) <= 1:
        df = plain
    else:
        groups = parquet_schema_groups(spark, files)
        if declared is None:
            _type_drift(table, groups)
            df = spark.read.option("mergeSchema", "true").parquet(src.path) if len(groups) > 1 else plain
        elif all(s[f.name].dataType == f.dataType for s, _ in groups for f in declared.fields if f.name in s.names):
            df = spark.read.schema(declared).parquet(src.path)
        else:
            local_dir = is_local_path(src.path) and Path(_where_file(src.path)).expanduser().is_dir()
            base = src.path if local_dir else None
            parts = [_cast_group(spark, table, declared, s, fs, base) for s, fs in groups]
            for (s, fs) in groups:
                changed = [f"{f.name} {s[f.name].dataType.simpleString()} -> {f.dataType.simpleString()}"
                           for f in declared.fields if f.name in s.names and s[f.name].dataType != f.dataType]
                if changed:
                    logger.info("ingest: table %s: %d file(s) cast to the declared schema (%s), e.g. %s", table,
                                len(fs), ", ".join(changed), _where_file(fs[0]))
            return reduce(lambda a, b: a.unionByName(b), parts)
    return df.drop(CORRUPT_RECORD).withColumn(CORRUPT_RECORD, F.lit(None).cast("string"))


def _inferred_type_drift(spark: "SparkSession", table: str, src: FileSourceConfig,
                         reader: "Callable[[], DataFrameReader]") -> None:
    """With ``infer_schema`` over several files: infer each file alone and refuse a column whose kind differs.

    Spark's own inference over all files would silently widen such a column to string. Numbers of different
    widths (int, bigint, double) and date vs timestamp widen safely and pass; a file whose column is all null
    (inferred as string) does not count.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import DateType, NumericType, TimestampNTZType, TimestampType

    def read(path: str) -> "DataFrame":
        if src.format == "csv":
            return reader().option("inferSchema", True).csv(path)
        return reader().option("primitivesAsString", False).json(path)

    files = (reader().csv(src.path) if src.format == "csv" else reader().json(src.path)).inputFiles()
    if len(files) < 2:
        return

    def kind(t: "DataType") -> str:
        if isinstance(t, NumericType):
            return "number"
        if isinstance(t, (DateType, TimestampType, TimestampNTZType)):
            return "date/timestamp"
        return t.simpleString()

    seen: dict[str, dict[str, dict[str, list[str]]]] = {}  # column -> kind -> type -> files
    frames = {}
    for f in sorted(files):
        frames[f] = read(f)
        for field in frames[f].schema.fields:
            if field.name != CORRUPT_RECORD:
                seen.setdefault(field.name, {}).setdefault(kind(field.dataType), {}).setdefault(
                    field.dataType.simpleString(), []).append(f)
    for column, kinds in seen.items():
        if len(kinds) < 2:
            continue
        text_files = kinds.get("string", {}).get("string", [])
        empty = {f for f in text_files if frames[f].select(F.count(_col(column))).first()[0] == 0}
        if empty:
            kinds = {k: {t: [f for f in fs if f not in empty] for t, fs in ts.items()} for k, ts in kinds.items()}
            kinds = {k: {t: fs for t, fs in ts.items() if fs} for k, ts in kinds.items()}
            kinds = {k: ts for k, ts in kinds.items() if ts}
        if len(kinds) > 1:
            files_by_type = {t: fs for ts in kinds.values() for t, fs in ts.items()}
            raise DataError(_drift_message(table, column, files_by_type))


def _require_rows(df: "DataFrame", table: str, src: FileSourceConfig) -> None:
    """Raise DataError when the table has no row at all (reads at most the first non-empty partition)."""
    if df.isEmpty():
        raise DataError(f"ingest: table '{table}': the {src.format} source {src.path} has no rows (empty or "
                        f"header-only files); expected at least one. Fix ingest.tables.{table}.path or the export "
                        f"that wrote it.")


def files_frame(spark: "SparkSession", table: str, src: FileSourceConfig) -> "DataFrame":
    """One table from files, with its declared (or opted-in inferred) schema plus ``_corrupt_record``.

    Args:
        table: the table's name in ``ingest.tables`` (for messages).

    Returns:
        DataFrame of shape (n_lines, n_columns + 1); malformed CSV/JSON lines are rows with their text in
        ``_corrupt_record``; Parquet rows whose value did not survive the cast to ``schema_ddl`` have their JSON
        there.

    Raises:
        ConfigError: ``schema_ddl`` does not parse.
        DataError: the path matches no file (Spark's "path does not exist"); the files hold no row; a column's
            type differs between files and no ``schema_ddl`` is declared (names the column, both types and the
            files); a file's type cannot be cast to the declared one.
    """
    from pyspark.errors import AnalysisException

    where = f"ingest.tables.{table}.schema_ddl"
    try:
        if src.format == "parquet":
            df = _parquet_frame(spark, table, src, where)
        elif src.format == "csv":
            if src.schema_ddl:
                schema = with_corrupt_record(declared_schema(src.schema_ddl, where))
            else:  # header names only, or an inference pass the user opted in to
                if src.infer_schema:
                    _inferred_type_drift(spark, table, src, lambda: _csv_reader(spark, src))
                schema = with_corrupt_record(_csv_reader(spark, src).option("inferSchema", src.infer_schema)
                                             .csv(src.path).schema)
            df = (_csv_reader(spark, src).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT_RECORD).schema(schema).csv(src.path))
        else:
            reader = _json_reader(spark, src.multi_line)
            if src.infer_schema and not src.schema_ddl:
                _inferred_type_drift(spark, table, src, lambda: _json_reader(spark, src.multi_line))
            schema = json_schema(reader, src.path, src.schema_ddl, src.infer_schema, where)
            df = (_json_reader(spark, src.multi_line).option("mode", "PERMISSIVE")
                  .option("columnNameOfCorruptRecord", CORRUPT_RECORD).schema(schema).json(src.path))
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise DataError(f"ingest: table '{table}': {src.format} path {src.path} does not exist; expected a "
                            f"file, folder or glob Spark can read. Fix ingest.tables.{table}.path.") from None
        raise
    _require_rows(df, table, src)
    return df
