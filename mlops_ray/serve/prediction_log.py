"""The serving prediction log: every answered record, and the feedback labels joined to it.

Shared by all replicas, and written before an answer is sent, so ``POST /v1/feedback`` finds
a request whichever replica answered it (../shared/CONTRACTS.md). Two backends behind one
:class:`PredictionLog` interface: SQLite in WAL mode at ``$MLOPS_RAY_HOME/predictions/predictions.db``
(one machine; replicas in several processes write to it concurrently), and PostgreSQL
(``deploy.prediction_log_url``) for replicas on several machines.

Tables::

    predictions(request_id, record_index, model_name, model_version, created_at,
                input_json, probability, label, threshold)   PRIMARY KEY (request_id, record_index)
    feedback(request_id, record_index, label, received_at)  PRIMARY KEY (request_id, record_index),
                                                            references predictions
    labelled_predictions                                      view: predictions JOIN feedback

``created_at`` and ``received_at`` are ISO-8601 UTC strings with microseconds (they sort as
text); ``input_json`` is the input record as the client sent it (it passed validation), as JSON
(ASCII, keys sorted).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from mlops_ray.errors import MlopsRayError

logger = logging.getLogger(__name__)

#: File name of the SQLite log under ``Home.predictions_dir()``.
SQLITE_FILENAME = "predictions.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id    TEXT    NOT NULL,
    record_index  INTEGER NOT NULL CHECK (record_index >= 0),
    model_name    TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    input_json    TEXT    NOT NULL,
    probability   REAL    NOT NULL,
    label         INTEGER NOT NULL CHECK (label IN (0, 1)),
    threshold     REAL    NOT NULL,
    PRIMARY KEY (request_id, record_index)
);
CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id   TEXT    NOT NULL,
    record_index INTEGER NOT NULL,
    label        INTEGER NOT NULL CHECK (label IN (0, 1)),
    received_at  TEXT    NOT NULL,
    PRIMARY KEY (request_id, record_index),
    FOREIGN KEY (request_id, record_index) REFERENCES predictions (request_id, record_index)
);
CREATE VIEW IF NOT EXISTS labelled_predictions AS
    SELECT p.request_id, p.record_index, p.model_name, p.model_version, p.created_at, p.input_json,
           p.probability, p.label AS predicted_label, p.threshold, f.label AS true_label, f.received_at
    FROM predictions AS p JOIN feedback AS f USING (request_id, record_index);
"""


class DuplicateRequestId(MlopsRayError):
    """The request id already has logged predictions (a client reused its X-Request-ID)."""


class UnknownRequestId(MlopsRayError):
    """No logged predictions carry this request id."""


@dataclass(frozen=True)
class LoggedPrediction:
    """One row of the log, with its feedback label when one arrived."""

    request_id: str
    record_index: int
    model_name: str
    model_version: str
    created_at: str
    record: dict[str, Any]
    probability: float
    label: int
    threshold: float
    true_label: int | None = None


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _prediction_rows(request_id: str, model_name: str, model_version, records, predictions) -> list[tuple]:
    """The ``predictions`` table rows of one answer, in column order.

    Raises:
        ValueError: ``records`` and ``predictions`` differ in length or are empty.
    """
    if not records or len(records) != len(predictions):
        raise ValueError(f"log_predictions needs as many predictions as records (>= 1); got "
                         f"{len(records)} records and {len(predictions)} predictions")
    now = _utc_now()
    return [(request_id, i, model_name, str(model_version), now, json.dumps(rec, sort_keys=True),
             float(p["probability"]), int(p["label"]), float(p["threshold"]))
            for i, (rec, p) in enumerate(zip(records, predictions))]


def _check_labels(labels: dict[int, int]) -> None:
    """Raises ValueError unless every label is the int 0 or 1."""
    bad = {i: v for i, v in labels.items() if v not in (0, 1) or isinstance(v, bool)}
    if bad:
        raise ValueError(f"feedback labels must be 0 or 1; got {bad}")


def _check_indices(request_id: str, labels: dict[int, int], n: int) -> None:
    """Raises UnknownRequestId when the request has no rows, ValueError for an index outside its ``n`` records."""
    if n == 0:
        raise UnknownRequestId(f"no logged predictions with request id {request_id!r}")
    outside = sorted(i for i in labels if not 0 <= i < n)
    if outside:
        raise ValueError(f"record index {outside} outside request {request_id!r}, which held {n} record(s) "
                         f"(indices 0..{n - 1})")


class PredictionLog(ABC):
    """What the model server needs from a prediction log backend."""

    @abstractmethod
    def log_predictions(self, request_id: str, model_name: str, model_version: str,
                        records: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]]) -> None:
        """Store one answer atomically: row i is ``records[i]`` with ``predictions[i]``
        (``probability``, ``label``, ``threshold``).

        Raises:
            DuplicateRequestId: the request id is already logged (nothing is written).
            ValueError: ``records`` and ``predictions`` differ in length or are empty.
        """

    @abstractmethod
    def record_count(self, request_id: str) -> int:
        """How many records the request held (0 when the request id is unknown)."""

    @abstractmethod
    def add_feedback(self, request_id: str, labels: dict[int, int]) -> int:
        """Store true labels ``{record_index: 0|1}`` of a logged request; a label sent again replaces the
        earlier one. Returns how many labels were stored.

        Raises:
            UnknownRequestId: no predictions carry ``request_id`` (nothing is written).
            ValueError: a record index outside the request or a label not 0/1 (nothing is written).
        """

    @abstractmethod
    def predictions_of(self, request_id: str) -> list[LoggedPrediction]:
        """The request's rows in record order, with feedback labels (empty when unknown)."""

    @abstractmethod
    def labelled_since(self, since: str) -> list[tuple[float, int, int]]:
        """``(probability, predicted label, true label)`` of every logged record whose feedback arrived at or
        after ``since`` (ISO-8601 UTC text, as ``received_at`` is stored), in (request id, record index) order."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class SQLitePredictionLog(PredictionLog):
    """The log in one SQLite file in WAL mode: readers never block the writer; writers from several
    processes queue on SQLite's lock for up to ``busy_timeout_s``.

    Each write is one short ``BEGIN IMMEDIATE`` transaction (the write lock is taken at the start,
    so a waiting writer retries within the busy timeout instead of failing on a lock upgrade).
    One connection per object, serialised by a lock, so it may be called from worker threads.

    Args:
        path: the database file (its folder is created).
        busy_timeout_s: how long a write waits for another process's lock, seconds.

    Raises:
        MlopsRayError: the database cannot be opened or put in WAL mode (e.g. on a network file
            system that lacks the shared memory WAL needs).
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 10.0):
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                         check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MlopsRayError(f"prediction log {self.path}: SQLite refused WAL mode (journal_mode is {mode}); "
                                    "put MLOPS_RAY_HOME on a local file system.")
            self._conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; safe in WAL mode
            self._conn.execute("PRAGMA foreign_keys = ON")
            with self._lock:
                self._write(lambda c: c.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;"), begin=False)
        except (sqlite3.Error, OSError) as e:
            raise MlopsRayError(f"prediction log {self.path} cannot be opened: {e}. Check that the folder is "
                                "writable and on a local file system.") from e

    def _write(self, fn, begin: bool = True):
        c = self._conn
        if begin:
            c.execute("BEGIN IMMEDIATE")
        try:
            out = fn(c)
            if begin:
                c.execute("COMMIT")
            return out
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def log_predictions(self, request_id, model_name, model_version, records, predictions) -> None:
        rows = _prediction_rows(request_id, model_name, model_version, records, predictions)
        with self._lock:
            try:
                self._write(lambda c: c.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows))
            except sqlite3.IntegrityError as e:
                if "UNIQUE" not in str(e):
                    raise
                raise DuplicateRequestId(f"request id {request_id!r} is already in the prediction log") from None

    def record_count(self, request_id: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM predictions WHERE request_id = ?",
                                      (request_id,)).fetchone()[0]

    def add_feedback(self, request_id: str, labels: dict[int, int]) -> int:
        _check_labels(labels)
        now = _utc_now()

        def upsert(c: sqlite3.Connection) -> int:
            _check_indices(request_id, labels, c.execute("SELECT count(*) FROM predictions WHERE request_id = ?",
                                                         (request_id,)).fetchone()[0])
            c.executemany("INSERT INTO feedback VALUES (?, ?, ?, ?) ON CONFLICT (request_id, record_index) "
                          "DO UPDATE SET label = excluded.label, received_at = excluded.received_at",
                          [(request_id, i, v, now) for i, v in sorted(labels.items())])
            return len(labels)

        with self._lock:
            return self._write(upsert)

    def predictions_of(self, request_id: str) -> list[LoggedPrediction]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT p.request_id, p.record_index, p.model_name, p.model_version, p.created_at, p.input_json, "
                "p.probability, p.label, p.threshold, f.label FROM predictions AS p LEFT JOIN feedback AS f "
                "USING (request_id, record_index) WHERE p.request_id = ? ORDER BY p.record_index",
                (request_id,)).fetchall()
        return [LoggedPrediction(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9]) for r in rows]

    def labelled_since(self, since: str) -> list[tuple[float, int, int]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT probability, predicted_label, true_label FROM labelled_predictions WHERE received_at >= ? "
                "ORDER BY request_id, record_index", (since,)).fetchall()
        return [(float(p), int(a), int(b)) for p, a, b in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        request_id TEXT NOT NULL, record_index INTEGER NOT NULL CHECK (record_index >= 0),
        model_name TEXT NOT NULL, model_version TEXT NOT NULL, created_at TEXT NOT NULL, input_json TEXT NOT NULL,
        probability DOUBLE PRECISION NOT NULL, label INTEGER NOT NULL CHECK (label IN (0, 1)),
        threshold DOUBLE PRECISION NOT NULL, PRIMARY KEY (request_id, record_index))""",
    "CREATE INDEX IF NOT EXISTS predictions_created_at ON predictions (created_at)",
    """CREATE TABLE IF NOT EXISTS feedback (
        request_id TEXT NOT NULL, record_index INTEGER NOT NULL, label INTEGER NOT NULL CHECK (label IN (0, 1)),
        received_at TEXT NOT NULL, PRIMARY KEY (request_id, record_index),
        FOREIGN KEY (request_id, record_index) REFERENCES predictions (request_id, record_index))""",
    """CREATE OR REPLACE VIEW labelled_predictions AS
        SELECT p.request_id, p.record_index, p.model_name, p.model_version, p.created_at, p.input_json,
               p.probability, p.label AS predicted_label, p.threshold, f.label AS true_label, f.received_at
        FROM predictions AS p JOIN feedback AS f USING (request_id, record_index)""",
)


class PostgresPredictionLog(PredictionLog):
    """The log in a PostgreSQL database, for replicas on several machines (same tables as SQLite).

    Each write is one transaction; a reused request id violates the primary key and is reported as
    :class:`DuplicateRequestId` with nothing written. One connection per object, serialised by a
    lock; a broken connection is reopened once per call.

    Args:
        url: ``postgresql://USER@HOST:PORT/DATABASE`` without a password (it comes from
            ``password_env``, or libpq's own ``PGPASSWORD``/``~/.pgpass``).
        password_env: environment variable holding the password, or None.
        busy_timeout_s: statement and connect timeout, seconds.

    Raises:
        MlopsRayError: the database cannot be reached or the tables cannot be created (the message
            names the URL, never a password).
    """

    def __init__(self, url: str, password_env: str | None = None, busy_timeout_s: float = 10.0):
        self.url = url
        self.password_env = password_env
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn = None
        with self._lock:
            self._run(lambda cur: [cur.execute("SELECT pg_advisory_xact_lock(727)"),  # one creator at a time
                                   *[cur.execute(q) for q in _PG_SCHEMA]])

    def _connect(self):
        import os

        import psycopg

        kwargs: dict[str, Any] = {"connect_timeout": max(1, int(self.busy_timeout_s)),
                                  "options": f"-c statement_timeout={int(self.busy_timeout_s * 1000)}"}
        if self.password_env:
            if self.password_env not in os.environ:
                raise MlopsRayError(f"prediction log {self.url}: the password comes from environment variable "
                                    f"{self.password_env}, which is not set. Set it for every replica.")
            kwargs["password"] = os.environ[self.password_env]
        try:
            return psycopg.connect(self.url, **kwargs)
        except psycopg.Error as e:
            raise MlopsRayError(f"prediction log {self.url} cannot be opened: {e}".strip()) from None

    def _run(self, fn):
        """Run ``fn(cursor)`` in one transaction (reconnecting once if the connection broke); caller holds the lock."""
        import psycopg

        for attempt in (0, 1):
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            try:
                with self._conn.transaction(), self._conn.cursor() as cur:
                    return fn(cur)
            except psycopg.OperationalError:
                if attempt or not self._conn.closed:
                    raise
                self._conn = None  # the server closed it (restart, idle timeout): reconnect once

    def log_predictions(self, request_id, model_name, model_version, records, predictions) -> None:
        import psycopg

        rows = _prediction_rows(request_id, model_name, model_version, records, predictions)
        with self._lock:
            try:
                self._run(lambda cur: cur.executemany(
                    "INSERT INTO predictions VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", rows))
            except psycopg.errors.UniqueViolation:
                raise DuplicateRequestId(f"request id {request_id!r} is already in the prediction log") from None

    def record_count(self, request_id: str) -> int:
        with self._lock:
            return self._run(lambda cur: cur.execute("SELECT count(*) FROM predictions WHERE request_id = %s",
                                                     (request_id,)).fetchone()[0])

    def add_feedback(self, request_id: str, labels: dict[int, int]) -> int:
        _check_labels(labels)
        now = _utc_now()

        def upsert(cur) -> int:
            _check_indices(request_id, labels, cur.execute("SELECT count(*) FROM predictions WHERE request_id = %s",
                                                           (request_id,)).fetchone()[0])
            cur.executemany("INSERT INTO feedback VALUES (%s, %s, %s, %s) ON CONFLICT (request_id, record_index) "
                            "DO UPDATE SET label = excluded.label, received_at = excluded.received_at",
                            [(request_id, i, v, now) for i, v in sorted(labels.items())])
            return len(labels)

        with self._lock:
            return self._run(upsert)

    def predictions_of(self, request_id: str) -> list[LoggedPrediction]:
        with self._lock:
            rows = self._run(lambda cur: cur.execute(
                "SELECT p.request_id, p.record_index, p.model_name, p.model_version, p.created_at, p.input_json, "
                "p.probability, p.label, p.threshold, f.label FROM predictions AS p LEFT JOIN feedback AS f "
                "USING (request_id, record_index) WHERE p.request_id = %s ORDER BY p.record_index",
                (request_id,)).fetchall())
        return [LoggedPrediction(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9]) for r in rows]

    def labelled_since(self, since: str) -> list[tuple[float, int, int]]:
        with self._lock:
            rows = self._run(lambda cur: cur.execute(
                "SELECT probability, predicted_label, true_label FROM labelled_predictions WHERE received_at >= %s "
                "ORDER BY request_id, record_index", (since,)).fetchall())
        return [(float(p), int(a), int(b)) for p, a, b in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def sqlite_log_path(home) -> Path:
    """Where the SQLite prediction log of ``home`` (a :class:`mlops_ray.home.Home`) lives."""
    return home.predictions_dir() / SQLITE_FILENAME


def open_prediction_log(home, busy_timeout_s: float = 10.0, url: str | None = None,
                        password_env: str | None = None) -> PredictionLog:
    """The prediction log: PostgreSQL at ``url`` (``deploy.prediction_log_url``, for a cluster), else SQLite
    in WAL mode under ``$MLOPS_RAY_HOME/predictions/`` (one machine)."""
    if url:
        return PostgresPredictionLog(url, password_env=password_env, busy_timeout_s=busy_timeout_s)
    return SQLitePredictionLog(sqlite_log_path(home), busy_timeout_s=busy_timeout_s)
