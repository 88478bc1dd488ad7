"""Pre-flight: refuse an empty input before any stage runs.

Cheap checks of the main table's local files, done by :func:`mlops_ray.pipeline.run_pipeline`
before it creates a run record or starts Spark: a path that matches nothing, zero-byte files,
header-only CSV, JSON without a record, Parquet with zero rows. Remote sources (JDBC, HTTP,
``s3a://`` …) and compressed files are checked by ingest itself once read (the table is then
refused with the same kind of message), because knowing they are empty means reading them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlops_ray.config import FileSourceConfig, IngestConfig
from mlops_ray.errors import DataError

logger = logging.getLogger(__name__)

#: Compressed files are left to ingest (reading them here would cost as much as ingesting).
_COMPRESSED = (".gz", ".bz2", ".zst", ".zstd", ".lz4", ".snappy", ".deflate", ".xz", ".zip")
#: Multi-line JSON files up to this size are parsed here; larger ones are left to ingest.
_MAX_PARSED_JSON_BYTES = 8 << 20


def _csv_has_row(path: Path, header: bool) -> bool:
    """True when the file holds a non-blank line after the header (when there is one)."""
    seen_header = not header
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            if seen_header:
                return True
            seen_header = True
    return False


def _json_has_record(path: Path, multi_line: bool) -> bool | None:
    """True/False for JSON lines or a small multi-line JSON file; None when too large to tell cheaply."""
    if not multi_line:
        with path.open("rb") as f:
            return any(line.strip() for line in f)
    if path.stat().st_size > _MAX_PARSED_JSON_BYTES:
        return None
    try:
        data = json.loads(path.read_bytes() or b"null")
    except ValueError:
        return True  # malformed: ingest quarantines it as a malformed record, with a reason
    return bool(data) if isinstance(data, (list, dict)) else data is not None


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def file_source_has_rows(table: str, src: FileSourceConfig) -> bool | None:
    """Whether a local file source holds at least one row: True, False, or None (cannot tell cheaply).

    Raises:
        DataError: the path matches no file.
    """
    from mlops_ray.ingest.files import is_local_path, local_files

    if not is_local_path(src.path):
        return None
    unknown = False
    for f in local_files(src.path):
        if f.stat().st_size == 0:
            continue
        if f.name.endswith(_COMPRESSED):
            unknown = True
            continue
        if src.format == "csv":
            found: bool | None = _csv_has_row(f, src.header)
        elif src.format == "json":
            found = _json_has_record(f, src.multi_line)
        else:
            found = _parquet_rows(f) > 0
        if found:
            return True
        unknown = unknown or found is None
    return None if unknown else False


def check_inputs(cfg: IngestConfig) -> None:
    """Refuse an empty main table before any stage runs.

    Raises:
        DataError: the main table's local files match nothing or hold no row (names the table, the
            path and what was found, and what to fix).
    """
    if cfg.source == "tables":
        src = cfg.tables[cfg.main_table]
        if not isinstance(src, FileSourceConfig):
            return
        if file_source_has_rows(cfg.main_table, src) is False:
            raise DataError(f"pre-flight: the main table '{cfg.main_table}' has no rows: its {src.format} source "
                            f"{src.path} holds only empty{' or header-only' if src.format == 'csv' else ''} files. "
                            f"No stage was run. Fix ingest.tables.{cfg.main_table}.path, or the export that wrote it.")
        return
    if cfg.source == "files":
        from mlops_ray.ingest import source_files

        path = source_files(cfg)["flights"]
        if path.suffix == ".csv" and not _csv_has_row(path, header=True):
            raise DataError(f"pre-flight: the flights table {path} has no rows (empty or header-only). No stage was "
                            f"run. Fix ingest.data_dir or the file.")
