"""Validate helpers: a table written where ingest writes it, validated for real, its outputs read back."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from mlops_ray.config import FileSourceConfig, ValidateConfig, config_from_mapping
from mlops_ray.home import Home
from mlops_ray.ingest.files import files_frame
from mlops_ray.validate import ValidateResult, run_validate


def validate_config(**kw: Any) -> ValidateConfig:
    """The validate slice of a config mapping, validated as the loader does."""
    return config_from_mapping({"validate": kw}).validate_


def ingested_csv(spark, tmp_path: Path, text: str, **source: Any) -> str:
    """``text`` as a CSV file read by the file source (strings unless ``schema_ddl``), written as ingest's flights.

    Returns:
        The ingest output folder, as run_validate takes it.
    """
    src = tmp_path / f"table-{uuid.uuid4().hex[:6]}.csv"
    src.write_text(text)
    out = tmp_path / f"ingest-{uuid.uuid4().hex[:6]}"
    df = files_frame(spark, "flights", FileSourceConfig(type="file", path=str(src), format="csv", **source))
    df.write.parquet(str(out / "flights"))
    return str(out)


def validate(spark, tmp_path: Path, ingest_path: str, cfg: ValidateConfig, **kw: Any) -> ValidateResult:
    """run_validate on ``ingest_path`` with a fresh cache key and home under ``tmp_path``."""
    home = Home.resolve(tmp_path / "home").ensure()
    return run_validate(cfg, lambda: spark, ingest_path, uuid.uuid4().hex, home, **kw)


def parquet_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a Parquet folder (pyarrow: no Spark job), as dicts."""
    import pyarrow.parquet as pq

    return pq.read_table(str(path)).to_pylist()


def quarantine_by_id(result: ValidateResult) -> dict[Any, tuple]:
    """id -> (reason, reason_column, reason_value) of every quarantined row."""
    return {r["id"]: (r["reason"], r["reason_column"], r["reason_value"])
            for r in parquet_rows(Path(result.path) / "quarantine")}


def kept_by_id(result: ValidateResult) -> dict[Any, dict[str, Any]]:
    """id -> row of every kept row."""
    return {r["id"]: r for r in parquet_rows(Path(result.path) / "valid")}
