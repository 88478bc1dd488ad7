"""Batch scoring with Ray Data: ``mlops-ray predict --data PATH --out PATH [--model URI]``.

The file (CSV, Parquet, or a folder of either) is read with ``ray.data``, scored by
``map_batches`` on a small pool of actors, each of which loads the model version once, and
written back with Ray Data. Every row goes through what ``POST /v1/predict`` does to a record:
the same input-schema validation (:func:`mlops_ray.serve.schema.validate_record` with the
version's ``spec.inputs`` and outcome columns) and the same feature spec and estimator
(:class:`mlops_ray.serve.model.ServedModel`). A row that fails validation is kept, with a
null ``probability`` and ``label`` and an ``error`` naming each bad field and the problem;
no row is dropped (rows out = rows in).

Columns outside the input schema (ids, labels, even outcome columns of historical data) are
passed through to the output unchanged and are never read as features.

One cell that is no number (``distance=abc``) makes the CSV reader type its whole column as text: such an
integer/number input column is converted back value by value (:func:`numbers_from_text`), so only that row
is rejected, and it is written out as numbers (null where the text was no number; the ``error`` names it).
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_ray.config import OUTCOME_COLUMNS, RegisterConfig
from mlops_ray.errors import MlopsRayError
from mlops_ray.home import Home
from mlops_ray.serve.schema import number_from_text

logger = logging.getLogger(__name__)

#: Columns batch scoring adds to every row (a file already holding one of them is refused).
SCORE_COLUMNS = ("probability", "label", "threshold", "model_version", "error")

#: Rows per ``map_batches`` call: large enough that the feature derivation runs vectorised.
DEFAULT_BATCH_SIZE = 4096


@dataclass(frozen=True)
class BatchPredictResult:
    """What a batch scoring run did.

    Attributes:
        out: the folder the scored rows were written to (Ray Data part files).
        out_format: ``parquet`` or ``csv``.
        model_uri: the pinned version scored with, ``models:/NAME/VERSION``.
        version: the model version.
        rows_in: rows read from ``data``.
        rows_out: rows written to ``out`` (always ``rows_in``).
        rows_scored: rows with a probability.
        rows_invalid: rows refused by validation (null probability, reason in ``error``).
    """

    out: str
    out_format: str
    model_uri: str
    version: str
    rows_in: int
    rows_out: int
    rows_scored: int
    rows_invalid: int


def input_format(data: str | Path) -> str:
    """``parquet`` or ``csv`` for a file, or a folder of such files, by their suffix.

    Raises:
        MlopsRayError: the path does not exist, is an empty folder, or holds neither format.
    """
    p = Path(data)
    if not p.exists():
        raise MlopsRayError(f"--data {data} does not exist; pass a CSV or Parquet file, or a folder of them.")
    files = [f for f in p.rglob("*") if f.is_file() and not f.name.startswith((".", "_"))] if p.is_dir() else [p]
    kinds = {"parquet" if f.suffix in (".parquet", ".pq") else "csv" if f.name.endswith((".csv", ".csv.gz"))
             else None for f in files}
    if len(kinds) == 1 and None not in kinds:
        return kinds.pop()
    raise MlopsRayError(f"--data {data}: expected a .csv or .parquet file, or a folder of only one of those; got "
                        f"{sorted(f.name for f in files)[:10] or 'an empty folder'}.")


def output_format(out: str | Path) -> str:
    """``csv`` when ``out`` ends in ``.csv``, else ``parquet`` (Ray Data writes a folder of part files)."""
    return "csv" if str(out).rstrip("/").endswith(".csv") else "parquet"


def _json_ready(frame) -> list[dict[str, Any]]:
    """The batch's rows as a request body would carry them: plain Python values, nulls (NaN, NA, NaT) as None
    and left out, timestamps as ISO-8601 strings (with their offset when they have one). Numbers keep their
    full precision (no text round trip)."""
    import pandas as pd

    columns = {}
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_datetime64_any_dtype(s):
            values = [None if pd.isna(t) else t.isoformat() for t in s]
        else:
            values = [None if v is None or (not isinstance(v, (str, bytes, list, dict)) and pd.isna(v)) else v
                      for v in s.tolist()]
        columns[c] = values
    return [{c: columns[c][i] for c in columns if columns[c][i] is not None} for i in range(len(frame))]


def numbers_from_text(frame, inputs: dict[str, tuple[str, bool]]):
    """``frame`` with each column that the input schema types ``integer``/``number`` but that was read as text
    (one bad cell makes pandas/pyarrow read the whole column as text) converted value by value with
    :func:`number_from_text`; other columns are left as they are. Pure: returns a new frame.

    Returns:
        (the frame for validation, the names of the converted columns). A converted column has object dtype and
        holds ints, floats, None and the text that is no number.
    """
    import pandas as pd

    out = frame.copy()
    converted = []
    for c, (kind, _) in inputs.items():
        if kind not in ("integer", "number") or c not in frame.columns:
            continue
        s = frame[c]
        if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
            continue
        values = [number_from_text(v) if isinstance(v, str) else
                  (None if v is None or (not isinstance(v, (bytes, list, dict)) and pd.isna(v)) else v)
                  for v in s.tolist()]
        out[c] = pd.Series(values, index=frame.index, dtype=object)
        converted.append(c)
    return out, converted


def numeric_output(values, kind: str):
    """A column converted by :func:`numbers_from_text` as it is written out: ``Int64`` for an ``integer`` field,
    ``Float64`` for a ``number`` field. A value that is no number of that kind (text left, a fraction in an
    integer field) is null here; its row is rejected and the value is named in its ``error``."""
    import pandas as pd

    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
            (kind != "integer" or (float(v).is_integer() and -2**63 <= v < 2**63))

    if kind == "integer":
        return pd.array([int(v) if ok(v) else pd.NA for v in values], dtype="Int64")
    return pd.array([float(v) if ok(v) else pd.NA for v in values], dtype="Float64")


def _answers(address: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (a stale address file points at nothing)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def running_local_ray() -> str | None:
    """The GCS address (``host:port``) of a Ray running on this machine, or None.

    Looks where ``ray.init(address="auto")`` looks, without connecting: the address of the latest cluster
    started with ``ray start`` (``/tmp/ray/ray_current_cluster``), then the GCS processes running on this
    machine (a local Ray started by ``ray.init()``, e.g. ``bash scripts/run.sh --keep-serving``, writes no
    address file). Only an address whose GCS port answers counts.
    """
    candidates: list[str] = []
    try:
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
    except Exception:  # noqa: BLE001 - private API moved: fall back to Ray's default location
        path = Path("/tmp/ray/ray_current_cluster")
    try:
        text = path.read_text().strip()
        if text:
            candidates.append(text)
    except OSError:
        pass
    try:
        from ray._private.services import find_gcs_addresses

        candidates += sorted(a for a in find_gcs_addresses() if a not in candidates)
    except Exception:  # noqa: BLE001 - private API moved or ps not readable: the address file only
        pass
    return next((a for a in candidates if _answers(a)), None)


def _csv_nulls():
    """pyarrow CSV options: empty and ``NA`` cells are null in string columns too (as pandas reads them)."""
    import pyarrow.csv

    return pyarrow.csv.ConvertOptions(strings_can_be_null=True)


class BatchScorer:
    """The ``map_batches`` callable: loads one model version per actor, scores pandas batches.

    Args:
        register_cfg: the ``register`` slice as a JSON dict (tracking URI, names).
        home_root: absolute ``MLOPS_RAY_HOME``.
        model_uri: the pinned version, ``models:/NAME/VERSION``.
    """

    def __init__(self, register_cfg: dict[str, Any], home_root: str, model_uri: str):
        from mlops_ray.serve.model import load_served_model

        self.model = load_served_model(RegisterConfig(**register_cfg), Home.resolve(home_root), model_uri,
                                       tempfile.mkdtemp(prefix="mlops_ray_batch_"))
        spec = self.model.transformer.spec
        self._inputs = spec.inputs
        self._outcomes = spec.outcome_columns or OUTCOME_COLUMNS
        self._flights = spec.recipe == "flights"

    def __call__(self, batch):
        """pandas DataFrame of raw rows -> the same rows plus :data:`SCORE_COLUMNS`."""
        import numpy as np
        import pandas as pd

        from mlops_ray.serve.schema import validate_record

        cols = [c for c in self._inputs if c in batch.columns]
        values, converted = numbers_from_text(batch[cols], self._inputs)
        good: list[dict[str, Any]] = []
        ok = np.zeros(len(batch), dtype=bool)
        errors: list[str | None] = []
        for i, rec in enumerate(_json_ready(values)):
            clean, problems = validate_record(rec, i, self._inputs, self._outcomes, self._flights)
            if problems:
                errors.append("; ".join(f"{p['loc'][-1]}: {p['msg']}" for p in problems))
            else:
                good.append(clean)
                ok[i] = True
                errors.append(None)
        proba = np.full(len(batch), np.nan)
        if good:
            proba[ok] = self.model.predict_proba(good)
        m = self.model
        out = batch.reset_index(drop=True).copy()
        for c in converted:  # numbers written back as numbers, not the text they were read as
            out[c] = numeric_output(values[c].tolist(), self._inputs[c][0])
        out["probability"] = pd.array([float(p) if k else pd.NA for p, k in zip(proba, ok)], dtype="Float64")
        out["label"] = pd.array([int(p >= m.threshold) if k else pd.NA for p, k in zip(proba, ok)], dtype="Int64")
        out["threshold"] = m.threshold
        out["model_version"] = m.version
        out["error"] = pd.array(errors, dtype="string")
        return out


def run_batch_predict(register_cfg: RegisterConfig, home: Home, data: str | Path, out: str | Path,
                      model_uri: str, ray, *, actors: int = 1, num_cpus_per_actor: float = 0.5,
                      batch_size: int = DEFAULT_BATCH_SIZE) -> BatchPredictResult:
    """Score every row of ``data`` with ``model_uri`` on Ray Data and write them to ``out``.

    Args:
        register_cfg: the ``register`` slice (where the registry is).
        home: the home the registry lives in.
        data: a CSV or Parquet file, or a folder of one of them (as Ray Data reads it). Raw records:
            the input-schema columns (``GET /v1/model``) plus any others, which are passed through.
        out: folder to write, Parquet part files (CSV part files when it ends in ``.csv``); it must not
            exist or be empty.
        model_uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; the alias is resolved once, so
            every actor scores with the same version.
        ray: the connected ``ray`` module.
        actors: size of the scoring actor pool (each loads the model once).
        num_cpus_per_actor: Ray CPUs each scoring actor reserves.
        batch_size: rows per scoring call.

    Returns:
        A :class:`BatchPredictResult` with the row accounting.

    Raises:
        MlopsRayError: ``data`` missing or not CSV/Parquet, a required input column missing from it,
            a column named like a score column, ``out`` not empty, or rows lost (a bug).
        RegistryError: ``model_uri`` does not resolve.
    """
    import ray.data

    from mlops_ray.registry import resolve_version
    from mlops_ray.registry.uri import parse_model_uri
    from mlops_ray.serve.model import load_served_model

    fmt_in, fmt_out = input_format(data), output_format(out)
    out_path = Path(out)
    if out_path.is_file() or (out_path.is_dir() and any(out_path.iterdir())):
        raise MlopsRayError(f"--out {out} already exists and is not an empty folder; Ray Data writes a folder of "
                            "part files there. Remove it or choose another --out.")
    name, _, _ = parse_model_uri(model_uri)
    mv = resolve_version(register_cfg, home, model_uri)
    pinned = f"models:/{name}/{mv.version}"
    with tempfile.TemporaryDirectory(prefix="mlops_ray_batch_spec_") as tmp:  # the schema, checked before Ray work
        spec = load_served_model(register_cfg, home, pinned, tmp).transformer.spec

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.use_datasource_v2
    ctx.execution_options.preserve_order = True  # rows come out in the order they were read
    ctx.enable_progress_bars = False
    # Ray Data's Parquet reader V2 (the default in the locked Ray 2.60) lists files by starting FooterReader actors
    # for each read; a new actor process costs 5-8 s on a 2-core node, twice per command (the input and the
    # read-back below). The V1 reader reads footers in its read tasks: 240 rows scored in 9 s instead of 23-26 s here.
    ctx.use_datasource_v2 = False
    try:
        path = str(Path(data).resolve())
        ds = ray.data.read_parquet(path) if fmt_in == "parquet" else ray.data.read_csv(path, convert_options=_csv_nulls())
        columns = ds.schema().names
        missing = [c for c, (_, required) in spec.inputs.items() if required and c not in columns]
        if missing:
            raise MlopsRayError(f"--data {data} lacks required column(s) {missing} of {name} v{mv.version}'s input "
                                f"schema; got columns {columns}. See GET /v1/model for the schema.")
        clash = [c for c in SCORE_COLUMNS if c in columns]
        if clash:
            raise MlopsRayError(f"--data {data} already has column(s) {clash}, which scoring adds; rename or drop them.")
        rows_in = ds.count()
        scored = ds.map_batches(BatchScorer, batch_format="pandas", batch_size=batch_size,
                                fn_constructor_kwargs={"register_cfg": register_cfg.model_dump(mode="json"),
                                                       "home_root": str(home.root), "model_uri": pinned},
                                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus_per_actor)
        dest = str(out_path.resolve())
        if fmt_out == "csv":
            scored.write_csv(dest)
            written = ray.data.read_csv(dest, convert_options=_csv_nulls())
        else:
            scored.write_parquet(dest)
            written = ray.data.read_parquet(dest)
        rows_out = invalid = 0  # counted on what landed in ``out``, not on what was meant to land there
        for b in written.select_columns(["error"]).iter_batches(batch_format="pandas", batch_size=None):
            rows_out += len(b)
            invalid += int(b["error"].notna().sum())
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.use_datasource_v2 = saved
    if rows_out != rows_in:
        raise MlopsRayError(f"batch scoring read {rows_in} rows but produced {rows_out}; this is a bug, please report it.")
    logger.info("batch predict: %d rows (%d invalid) with %s -> %s", rows_in, invalid, pinned, out_path)
    return BatchPredictResult(out=str(out_path.resolve()), out_format=fmt_out, model_uri=pinned, version=str(mv.version),
                              rows_in=rows_in, rows_out=rows_out, rows_scored=rows_out - invalid, rows_invalid=invalid)
