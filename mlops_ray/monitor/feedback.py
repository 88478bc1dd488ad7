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
        stored: labels stored in the prediction log (a label sent again replaces the earlier one).
        rejects: the rows not stored, with a ``reason`` column (unknown request id, index outside the
            request, label not 0/1, missing record_index for a multi-record request).
    """

    rows: int
    stored: int
    rejects: "pd.DataFrame"


def import_labels(log: "PredictionLog", labels: "pd.DataFrame") -> LabelImport:
    """Store each row's label for its logged prediction; return the accounting and the rejects.

    Raises:
        DataError: a required column (``request_id``, ``label``) is missing (names what the frame has).
    """
    import pandas as pd

    missing = [c for c in REQUIRED if c not in labels.columns]
    if missing:
        raise DataError(f"labels: column(s) {missing} missing; expected request_id, label and (for requests of "
                        f"several records) record_index; got {list(labels.columns)}.")
    frame = labels.reset_index(drop=True).copy()
    if "record_index" not in frame:
        frame["record_index"] = pd.NA
    reasons: list[str | None] = [None] * len(frame)
    for rid, group in frame.groupby(frame["request_id"].astype(str), sort=True):
        n = log.record_count(rid)
        if n == 0:
            for i in group.index:
                reasons[i] = "unknown request_id: no logged prediction carries it"
            continue
        good: dict[int, int] = {}
        for i, row in group.iterrows():
            label, idx = row["label"], row["record_index"]
            if pd.isna(idx):
                if n != 1:
                    reasons[i] = f"record_index missing: the request held {n} records"
                    continue
                idx = 0
            if pd.isna(label) or float(label) not in (0.0, 1.0):
                reasons[i] = f"label must be 0 or 1; got {label!r}"
            elif float(idx) != int(float(idx)) or not 0 <= int(float(idx)) < n:
                reasons[i] = f"record_index {idx!r} outside the request's {n} record(s)"
            else:
                good[int(float(idx))] = int(float(label))  # the last row for an index wins, as on the endpoint
        if good:
            log.add_feedback(rid, good)
    rejected = np.array([r is not None for r in reasons], dtype=bool)
    rejects = frame[rejected].assign(reason=[r for r in reasons if r is not None])
    stored = int((~rejected).sum())
    if len(rejects):
        logger.warning("labels: %d of %d rows not stored (%s)", len(rejects), len(frame),
                       rejects["reason"].str.split(":").str[0].value_counts().to_dict())
    return LabelImport(rows=len(frame), stored=stored, rejects=rejects.reset_index(drop=True))


def read_labels(path: str) -> "pd.DataFrame":
    """A labels file as a DataFrame: Parquet (file or folder) or CSV (request ids read as text).

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
    return pd.read_csv(p, dtype={"request_id": str})
