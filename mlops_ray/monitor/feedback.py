"""Late labels: a labels file or table joined to the logged predictions by request id.

True outcomes often arrive long after the answer (a flight lands hours later; a loan defaults
months later), as a file or a table rather than one ``POST /v1/feedback`` per request.
:func:`import_labels` stores them in the prediction log exactly as the endpoint does, so the
drift monitor's rolling accuracy / F1 / ROC AUC and the batch report see them. A label that
cannot be stored is never dropped silently: it comes back as a reject with the reason.

Columns of the labels frame: ``request_id`` (the ``request_id`` of a ``/v1/predict`` answer),
``label`` (0 or 1) and, for requests of several records, ``record_index`` (0-based position in
the request; may be omitted when every request holds one record).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mlops_ray.errors import DataError
from mlops_ray.serve.schema import finite_number

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from mlops_ray.serve.prediction_log import PredictionLog

logger = logging.getLogger(__name__)

REQUIRED = ("request_id", "label")


@dataclass(frozen=True)
class LabelImport:
    """What :func:`import_labels` did.

    Attributes:
        rows: rows of the labels frame; always ``stored + len(rejects)``.
        stored: rows whose label was stored in the prediction log (a label sent again for the same record
            replaces the earlier one; both rows count as stored).
        rejects: the rows not stored, exactly as given (every column of the input, values untouched), plus a
            ``reason`` column naming the field at fault: request_id empty, unknown request id, label empty or
            not 0/1, record_index not a whole number, outside the request, or missing for a multi-record
            request. Several faults of one row are joined with ``"; "``.
    """

    rows: int
    stored: int
    rejects: "pd.DataFrame"


def _is_empty(value) -> bool:
    """None, NaN/NA, or text that is blank."""
    import pandas as pd

    if isinstance(value, str):
        return not value.strip()
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or other non-scalar: not empty, and not a number either
        return False


def _shown(value) -> str:
    """A value as the reason quotes it: text in quotes, numbers as they are."""
    return repr(value) if isinstance(value, str) else str(value)


def _label_fault(value) -> tuple[int | None, str | None]:
    """``(label, None)`` for 0/1 (number or text such as ``"1"``, ``"1.0"``), else ``(None, reason)``."""
    if _is_empty(value):
        return None, "label is empty"
    x = finite_number(value)
    if x is None or x not in (0.0, 1.0):
        return None, f"label must be 0 or 1; got {_shown(value)}"
    return int(x), None


def _index_fault(value, n: int) -> tuple[int | None, str | None]:
    """``(record_index, None)`` for a whole number in ``[0, n)`` (an empty value means 0 when ``n == 1``), else
    ``(None, reason)``."""
    if _is_empty(value):
        if n != 1:
            return None, f"record_index missing: the request held {n} records"
        return 0, None
    x = finite_number(value)
    if x is None or x != int(x):
        return None, f"record_index must be a whole number; got {_shown(value)}"
    if not 0 <= int(x) < n:
        return None, f"record_index {int(x)} outside the request's {n} record(s)"
    return int(x), None


def import_labels(log: "PredictionLog", labels: "pd.DataFrame") -> LabelImport:
    """Store each row's label for its logged prediction; return the accounting and the rejects.

    Every row ends stored or rejected (``rows == stored + len(rejects)``); nothing is dropped, including rows
    with an empty request id. Values may be numbers or their text (as :func:`read_labels` reads a CSV); the
    rejects keep them as given.

    Raises:
        DataError: a required column (``request_id``, ``label``) is missing (names what the frame has).
    """
    missing = [c for c in REQUIRED if c not in labels.columns]
    if missing:
        raise DataError(f"labels: column(s) {missing} missing; expected request_id, label and (for requests of "
                        f"several records) record_index; got {list(labels.columns)}.")
    given = labels.reset_index(drop=True)
    rids = given["request_id"].tolist()
    values = given["label"].tolist()
    indices = given["record_index"].tolist() if "record_index" in given.columns else [None] * len(given)
    reasons: list[str | None] = [None] * len(given)
    by_request: dict[str, list[int]] = {}
    for i, rid in enumerate(rids):
        if _is_empty(rid):
            reasons[i] = "request_id is empty"
        else:
            by_request.setdefault(str(rid), []).append(i)
    for rid, rows in by_request.items():
        n = log.record_count(rid)
        if n == 0:
            for i in rows:
                reasons[i] = "unknown request_id: no logged prediction carries it"
            continue
        good: dict[int, int] = {}
        for i in rows:
            label, label_fault = _label_fault(values[i])
            idx, index_fault = _index_fault(indices[i], n)
            faults = [f for f in (label_fault, index_fault) if f]
            if faults:
                reasons[i] = "; ".join(faults)
            else:
                good[idx] = label  # the last row for an index wins, as on the endpoint
        if good:
            log.add_feedback(rid, good)
    rejected = np.array([r is not None for r in reasons], dtype=bool)
    rejects = given[rejected].assign(reason=[r for r in reasons if r is not None])
    stored = int((~rejected).sum())
    if len(rejects):
        logger.warning("labels: %d of %d rows not stored (%s)", len(rejects), len(given),
                       rejects["reason"].str.split(r"[:;]").str[0].value_counts().to_dict())
    return LabelImport(rows=len(given), stored=stored, rejects=rejects.reset_index(drop=True))


def read_labels(path: str) -> "pd.DataFrame":
    """A labels file as a DataFrame: Parquet (file or folder, its own types) or CSV (every value read as text,
    an empty cell as ``""``, so rejects can be written back exactly as given; :func:`import_labels` parses).

    Raises:
        DataError: the file does not exist.
    """
    from pathlib import Path

    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"labels: {path} does not exist; pass a CSV or Parquet file with request_id and label.")
    if p.is_dir() or p.suffix == ".parquet":
        return pd.read_parquet(p)
    return pd.read_csv(p, dtype=str, keep_default_na=False)
