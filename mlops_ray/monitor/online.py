"""Online drift and rolling model quality, right across replicas: replicas count, one actor computes.

Each Serve replica holds an :class:`OnlineDriftRecorder`: per request it adds the derived
(pre-encoding) features of the answered records to windowed bin counts (a
:class:`~mlops_ray.monitor.window.FeatureWindow`), and the predicted probabilities to a score
histogram. Every ``monitor.push_interval_s`` it pushes its whole window (slot start times and
counts; a snapshot, so a lost or repeated push is harmless) to one named actor,
:class:`DriftMonitor` (``mlops_ray_drift_monitor`` in namespace ``mlops_ray``). Counts add up, so
the monitor sums the replicas' live slots and computes, every ``monitor.export_interval_s``:

- per feature, PSI of the window's bin counts against the training reference and the null share
  (:func:`mlops_ray.monitor.window.window_drift`, i.e. :func:`mlops_ray.monitor.drift.psi`);
- accuracy, F1 and ROC AUC (scikit-learn) of the feedback labels received in the window, joined
  to the logged predictions by request id (the prediction log's ``labelled_predictions`` view);

and sets the gauges ``mlops_feature_psi{feature}``, ``mlops_feature_null_share{feature}``,
``mlops_rolling_metric{metric}`` (Ray exports them as ``ray_mlops_*``, ../shared/CONTRACTS.md)
plus ``mlops_window_records``. A figure that is undefined is exported as NaN, so a stale value
never lingers: PSI with fewer than ``monitor.min_window_rows`` non-null values of the feature in the
window; every rolling metric with fewer than ``monitor.min_window_rows`` labelled records in the
window (:func:`rolling_metrics`); ROC AUC also when the labels hold one class only.

Bins are the reference's (``reference_stats.json``, :mod:`mlops_ray.preprocess.reference`):
numeric features use its interior ``edges`` (right-closed bins, ``searchsorted(side="left")``);
categorical features use its vocabulary plus one slot for every other value (the reference's
``other``); nulls are counted apart. PSI is over the non-null bins (as the batch report computes
it); the null share is reported on its own.

Window: time is cut in ``slots`` (default 10) aligned periods of ``window_s / slots`` seconds; the
window at time ``now`` holds the records observed in the slots that started after
``now - window_s`` (:meth:`DriftMonitor.drift` reports that start as ``window_start``). Rolling
metrics cover the labels received at or after ``now - window_s``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlops_ray.monitor.window import FeatureWindow, window_drift

logger = logging.getLogger(__name__)

#: Name and namespace of the central monitor actor (Serve replicas run in the ``serve`` namespace,
#: so both sides name the namespace).
MONITOR_ACTOR_NAME = "mlops_ray_drift_monitor"
MONITOR_NAMESPACE = "mlops_ray"


def monitor_actor_name(app_name: str) -> str:
    """The drift monitor actor of Serve application ``app_name`` (one per application: each watches its own
    champion's reference, e.g. ``flights`` and ``credit`` served side by side)."""
    return f"{MONITOR_ACTOR_NAME}:{app_name}"

#: Upper edges of the score histogram's first 9 bins: (-inf, 0.1], (0.1, 0.2], ..., (0.9, +inf).
SCORE_EDGES = tuple(i / 10 for i in range(1, 10))
_SCORE = "__prediction_score__"

#: Rolling metrics exported as ``mlops_rolling_metric{metric}``.
ROLLING_METRICS = ("accuracy", "f1", "roc_auc")


@dataclass(frozen=True)
class DriftReference:
    """The bins and reference counts online drift uses, taken from ``reference_stats.json``.

    Attributes:
        numeric_edges: feature -> interior edges (k,) (k + 1 bins).
        categories: feature -> vocabulary (m,) (m + 1 slots: the last holds every other value).
        counts: feature -> reference counts per non-null bin/slot, (k + 1,) or (m + 1,).
        category_types: categorical feature -> JSON type of its raw input where values need Spark's text
            to match the vocabulary (``integer``, ``boolean``; from the version's ``feature_spec.json``).
    """

    numeric_edges: dict[str, list[float]]
    categories: dict[str, list[str]]
    counts: dict[str, list[float]]
    category_types: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: dict, features: Sequence[str] | None = None) -> "DriftReference":
        """From the parsed ``reference_stats.json`` (layout: :mod:`mlops_ray.preprocess.reference`).

        Args:
            features: features to monitor (default: every feature of the reference with a non-null value).

        Raises:
            ValueError: a requested feature is not in the reference, or has no non-null value there.
        """
        numeric, categorical = stats.get("numeric", {}), stats.get("categorical", {})
        names = list(features) if features is not None else [n for n in [*numeric, *categorical]
                                                             if (numeric.get(n) or categorical.get(n))["count"] > 0]
        edges, cats, counts = {}, {}, {}
        for n in names:
            if n in numeric and numeric[n]["counts"]:
                edges[n] = [float(e) for e in numeric[n]["edges"]]
                counts[n] = [float(c) for c in numeric[n]["counts"]]
            elif n in categorical and categorical[n]["count"] > 0:
                cats[n] = [str(c["value"]) for c in categorical[n]["categories"]]
                counts[n] = [float(c["count"]) for c in categorical[n]["categories"]] + [float(categorical[n]["other"])]
            else:
                known = sorted([*numeric, *categorical])
                raise ValueError(f"feature {n!r} has no drift reference (no non-null training value, or not a "
                                 f"feature); the reference has {known}.")
        return cls(edges, cats, counts)

    @classmethod
    def from_model_dir(cls, path: str | Path, features: Sequence[str] | None = None) -> "DriftReference":
        """From the ``reference_stats.json`` of a downloaded model version (searched below ``path`` too), with the
        categorical input types of the ``feature_spec.json`` beside it (``category_types``).

        Raises:
            FileNotFoundError: no reference_stats.json under ``path`` (a version registered before
                drift references existed: register it again).
        """
        path = Path(path)
        found = [path / "reference_stats.json"] if (path / "reference_stats.json").is_file() \
            else sorted(path.rglob("reference_stats.json"))
        if not found:
            raise FileNotFoundError(f"no reference_stats.json under {path}; register the model again with this "
                                    "version of mlops_ray (preprocess writes the drift reference).")
        ref = cls.from_stats(json.loads(found[0].read_text()), features)
        spec = found[0].parent / "feature_spec.json"
        if spec.is_file():
            from mlops_ray.preprocess.feature_spec import CATEGORY_KEYS, FeatureSpec

            inputs = FeatureSpec.load(spec).inputs
            ref = replace(ref, category_types={n: inputs[n][0] for n in ref.categories
                                               if n in inputs and inputs[n][0] in CATEGORY_KEYS})
        return ref

    @property
    def features(self) -> list[str]:
        return [*self.numeric_edges, *self.categories]

    @property
    def key(self) -> str:
        """Fingerprint of the bins (edges and vocabularies): windows counted on other bins cannot be summed."""
        import hashlib

        blob = json.dumps([self.numeric_edges, self.categories], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def new_window(self, window_s: float, slots: int = 10) -> FeatureWindow:
        """An empty window over these bins plus the score histogram."""
        return FeatureWindow({**self.numeric_edges, _SCORE: list(SCORE_EDGES)}, self.categories, window_s, slots,
                             category_types=self.category_types)


def _column_arrays(frame, names: Sequence[str]) -> dict[str, Any]:
    """The frame's columns ``names`` (those present) as arrays, without building a Series per column.

    ``DataFrame.__getitem__`` costs ~25 us a column on pandas 3; ``Index.get_loc`` plus
    ``_get_column_array`` (the stored array) about 2 us. Falls back to the public path if pandas
    drops that method.
    """
    getter = getattr(frame, "_get_column_array", None)
    cols = frame.columns
    if getter is None or not cols.is_unique:
        return {n: frame[n].to_numpy() for n in names if n in cols}
    get_loc, out = cols.get_loc, {}
    for n in names:
        try:
            out[n] = getter(get_loc(n))
        except KeyError:
            pass
    return out


class OnlineDriftRecorder:
    """A replica's side: counts the answered records' features and scores, pushes the window to the monitor.

    Args:
        reference: the bins (:class:`DriftReference`).
        window_s: window length, seconds (``monitor.window_s``).
        slots: time slots of the window (expiry granularity ``window_s / slots``).
        replica_id: this recorder's key at the monitor (default: a random id).
        monitor_name, namespace: the :class:`DriftMonitor` actor to push to.

    Attributes:
        window_: the :class:`FeatureWindow` holding the counts.

    Example (a Serve replica)::

        rec = OnlineDriftRecorder(DriftReference.from_model_dir(model_dir), cfg.window_s).start(cfg.push_interval_s)
        proba, columns = served_model.score(records)                # per request
        rec.observe(columns, proba)
    """

    def __init__(self, reference: DriftReference, window_s: float = 300.0, slots: int = 10,
                 replica_id: str | None = None, monitor_name: str = MONITOR_ACTOR_NAME,
                 namespace: str = MONITOR_NAMESPACE):
        self.reference = reference
        self.window_s = window_s
        self.slots = slots
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.monitor_name = monitor_name
        self.namespace = namespace
        self.window_ = reference.new_window(window_s, slots)
        self._names = reference.features
        self._lock = threading.Lock()
        self._monitor = None
        self._stop = threading.Event()

    def observe(self, derived, scores, now: float | None = None) -> None:
        """Count one request.

        Args:
            derived: the pre-encoding features of its n records: a mapping column -> values of shape (n,)
                (as ``RecordTransformer.derived_columns`` / ``ServedModel.score`` return them; the cheap
                per-request form) or a DataFrame (n, ...) (as ``RecordTransformer.derived`` returns).
                A missing feature counts as null; other columns are ignored.
            scores: the predicted probabilities, shape (n,).
            now: seconds since the epoch (default: now).
        """
        if isinstance(derived, Mapping):
            cols, n = {k: derived[k] for k in self._names if k in derived}, len(scores)
        else:
            cols, n = _column_arrays(derived, self._names), len(derived)
        cols[_SCORE] = scores
        with self._lock:
            self.window_.update_columns(cols, n, now=now)

    def snapshot(self) -> dict[str, Any]:
        """The window as the monitor takes it: ``{"replica_id", "slot_start": (slots,), "counts": {feature:
        (slots, bins + 1) list}}`` (a copy; nulls last; the score histogram under ``__prediction_score__``)."""
        with self._lock:
            return {"replica_id": self.replica_id, "reference": self.reference.key,
                    "slot_start": self.window_._slot_start.tolist(),
                    "counts": {k: v.tolist() for k, v in self.window_.counts_.items()}}

    def flush(self):
        """Push :meth:`snapshot` to the monitor now, without waiting; returns the call's ObjectRef, or None when no
        monitor actor is running (the counts stay here and go with the next push)."""
        import ray

        if self._monitor is None:
            try:
                self._monitor = ray.get_actor(self.monitor_name, namespace=self.namespace)
            except ValueError:
                logger.debug("no drift monitor %s/%s yet", self.namespace, self.monitor_name)
                return None
        try:
            return self._monitor.push.remote(self.snapshot())
        except Exception:  # noqa: BLE001 - the monitor died: look it up again next time
            logger.warning("drift monitor push failed; retrying at the next interval", exc_info=True)
            self._monitor = None
            return None

    def start(self, interval_s: float = 5.0) -> "OnlineDriftRecorder":
        """Push every ``interval_s`` seconds from a daemon thread until :meth:`stop`; returns self."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.flush()

        threading.Thread(target=loop, name="mlops-drift-push", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop the push thread (a last :meth:`flush` is up to the caller)."""
        self._stop.set()


def _iso(ts: float) -> str:
    """Seconds since the epoch as the prediction log's ISO-8601 UTC text (sorts as text)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")


def labelled_predictions_since(log_path, since: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feedback received at or after ``since`` (epoch seconds), joined to its predictions.

    Args:
        log_path: the SQLite log file, or an open :class:`~mlops_ray.serve.prediction_log.PredictionLog`
            (e.g. the PostgreSQL one).

    Returns:
        (probability float (n,), predicted_label int (n,), true_label int (n,)); empty when the log
        does not exist yet.
    """
    from mlops_ray.serve.prediction_log import PredictionLog

    if isinstance(log_path, PredictionLog):
        rows = log_path.labelled_since(_iso(since))
    else:
        path = Path(log_path)
        if not path.is_file():
            return np.empty(0), np.empty(0, dtype=int), np.empty(0, dtype=int)
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT probability, predicted_label, true_label FROM labelled_predictions "
                                "WHERE received_at >= ?", (_iso(since),)).fetchall()
        finally:
            conn.close()
    a = np.array(rows, dtype=float).reshape(-1, 3)
    return a[:, 0], a[:, 1].astype(int), a[:, 2].astype(int)


def rolling_metrics(probability, predicted_label, true_label, min_rows: int = 1) -> dict[str, float | None]:
    """Accuracy, F1 (positive class 1) and ROC AUC of labelled predictions (scikit-learn).

    A figure from a handful of labels is noise, so every metric is None (undefined; exported as NaN)
    when fewer than ``min_rows`` labelled records are given, and ROC AUC is None as well when the
    labels hold one class only. Callers pass ``monitor.min_window_rows``
    (:class:`mlops_ray.config.MonitorConfig`, default 30), the same minimum online PSI uses:
    :meth:`DriftMonitor.rolling` passes its ``min_rows``, the ``mlops-ray monitor`` report the
    configured value. The default 1 only leaves out the empty case.

    Args:
        probability: predicted P(1), (n,); predicted_label: 0/1 at the served threshold, (n,);
        true_label: feedback labels 0/1, (n,).
        min_rows: fewest labelled records for which the metrics are computed (``monitor.min_window_rows``).

    Returns:
        ``{"rows", "accuracy", "f1", "roc_auc"}``: ``rows`` is always n; a metric is None when undefined
        (n < ``min_rows``, no rows at all; ROC AUC with one class only).
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    n = len(true_label)
    if n == 0 or n < min_rows:
        return {"rows": n, **{m: None for m in ROLLING_METRICS}}
    true_label = np.asarray(true_label)
    return {"rows": n, "accuracy": float(accuracy_score(true_label, predicted_label)),
            "f1": float(f1_score(true_label, predicted_label, zero_division=0)),
            "roc_auc": float(roc_auc_score(true_label, probability)) if len(set(true_label.tolist())) == 2 else None}


def rolling_summary(rolling: Mapping[str, Any], window_s: float, min_rows: int) -> str:
    """One line on the feedback of a window, as ``mlops-ray monitor`` prints it.

    Args:
        rolling: :func:`rolling_metrics`' result; window_s: the window, seconds (``monitor.window_s``);
        min_rows: the minimum it was computed with (``monitor.min_window_rows``).

    Example: ``feedback over the last 300 s: 5 labelled records (fewer than monitor.min_window_rows = 30:
    metrics not computed)``; with enough labels ``...: 40 labelled records; accuracy 0.900, F1 0.880,
    ROC AUC 0.950`` (ROC AUC ``-`` when the labels hold one class only).
    """
    n = int(rolling.get("rows") or 0)
    head = f"feedback over the last {window_s:g} s: "
    if n == 0:
        return head + "no labelled record"
    if n < min_rows:
        return head + (f"{n:,} labelled record{'s' if n != 1 else ''} (fewer than monitor.min_window_rows = "
                       f"{min_rows}: metrics not computed)")

    def fmt(v):
        return "-" if v is None else format(v, ".3f")

    return head + (f"{n:,} labelled records; accuracy {fmt(rolling.get('accuracy'))}, F1 {fmt(rolling.get('f1'))}, "
                   f"ROC AUC {fmt(rolling.get('roc_auc'))}")


class DriftMonitor:
    """The central side: sums the replicas' windows, computes PSI, null shares and rolling metrics, sets gauges.

    Run it as one named actor (:func:`start_drift_monitor`); its methods are also callable in process.

    Args:
        reference: the bins and reference counts (:class:`DriftReference`).
        window_s: window length, seconds (``monitor.window_s``).
        prediction_log_path: the SQLite prediction log (``$MLOPS_RAY_HOME/predictions/predictions.db``), or the
            PostgreSQL log's ``postgresql://`` URL (``deploy.prediction_log_url``); None: no rolling metrics.
        prediction_log_password_env: environment variable with the PostgreSQL log's password (or None).
        export_interval_s: how often the gauges are recomputed (0: only on :meth:`export`).
        min_rows: ``monitor.min_window_rows``: fewer non-null values of a feature in the window than this, its PSI
            is undefined (NaN); fewer labelled records than this, every rolling metric is (None, exported NaN).
        slots: the replicas' slot count (for ``window_start``).
    """

    def __init__(self, reference: DriftReference, window_s: float = 300.0, prediction_log_path: str | None = None,
                 export_interval_s: float = 5.0, min_rows: int = 30, slots: int = 10,
                 prediction_log_password_env: str | None = None):
        self.reference = reference
        self.window_s = window_s
        self.prediction_log_path = prediction_log_path
        self.prediction_log_password_env = prediction_log_password_env
        self._pg_log = None
        self.export_interval_s = export_interval_s
        self.min_rows = min_rows
        self.slots = slots
        self._windows: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        self._lock = threading.Lock()
        self._gauges = None
        if export_interval_s > 0:
            threading.Thread(target=self._loop, name="mlops-drift-export", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.export_interval_s)
            try:
                self.export()
            except Exception:  # noqa: BLE001 - keep exporting; the next round may succeed
                logger.exception("drift monitor export failed")

    def push(self, snapshot: dict[str, Any]) -> bool:
        """Take a replica's window (:meth:`OnlineDriftRecorder.snapshot`), replacing its previous one.

        Returns False (and keeps nothing) for a window counted on other bins than the monitor's reference
        (a replica still serving the previous model version during a rollout)."""
        if snapshot.get("reference") not in (None, self.reference.key):
            return False
        starts = np.asarray(snapshot["slot_start"], dtype=float)
        counts = {k: np.asarray(v, dtype=np.int64) for k, v in snapshot["counts"].items()}
        with self._lock:
            self._windows[snapshot["replica_id"]] = (starts, counts)
        return True

    def set_reference(self, reference: DriftReference) -> bool:
        """Monitor against ``reference`` from now on (a new champion); windows on other bins are dropped.
        Returns True when the reference changed."""
        with self._lock:
            if reference.key == self.reference.key:
                return False
            self.reference = reference
            self._windows.clear()
            return True

    def replicas(self) -> list[str]:
        """Replica ids that pushed a window."""
        with self._lock:
            return sorted(self._windows)

    def window_start(self, now: float) -> float:
        """Start of the window at ``now``, seconds since the epoch: the first slot start after ``now - window_s``."""
        length = self.window_s / self.slots
        return (math.floor((now - self.window_s) / length) + 1) * length

    def totals(self, now: float | None = None) -> dict[str, np.ndarray]:
        """Window counts summed over replicas: feature -> (bins + 1,), nulls last."""
        now = time.time() if now is None else now
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for starts, counts in self._windows.values():
                live = starts > now - self.window_s
                for k, c in counts.items():
                    s = c[live].sum(axis=0)
                    out[k] = out[k] + s if k in out else s
        return out

    def drift(self, now: float | None = None) -> dict[str, Any]:
        """``{"now", "window_start", "window_s", "replicas", "rows", "features": {name: {"psi", "null_share", "rows"}},
        "score_histogram": [counts of (-inf, .1], ..., (.9, +inf)]}`` over the window ending at ``now``."""
        now = time.time() if now is None else now
        tot = self.totals(now)
        score = tot.pop(_SCORE, np.zeros(len(SCORE_EDGES) + 2, dtype=np.int64))
        widths = {k: len(v) + 1 for k, v in self.reference.counts.items()}
        tot = {k: tot.get(k, np.zeros(widths[k], dtype=np.int64)) for k in self.reference.features}
        ref = {k: np.asarray(v, dtype=float) for k, v in self.reference.counts.items()}
        feats = window_drift(tot, ref, min_rows=self.min_rows)
        return {"now": now, "window_start": self.window_start(now), "window_s": self.window_s,
                "replicas": self.replicas(), "rows": int(score.sum()), "features": feats,
                "score_histogram": score[:-1].tolist()}

    def rolling(self, now: float | None = None) -> dict[str, float | None]:
        """:func:`rolling_metrics` of the feedback received in the window ending at ``now``, with this monitor's
        ``min_rows`` (``monitor.min_window_rows``): fewer labelled records in the window, every metric None."""
        if self.prediction_log_path is None:
            return {"rows": 0, **{m: None for m in ROLLING_METRICS}}
        now = time.time() if now is None else now
        source = self.prediction_log_path
        if source.startswith("postgresql://"):
            if self._pg_log is None:
                from mlops_ray.serve.prediction_log import PostgresPredictionLog

                self._pg_log = PostgresPredictionLog(source, password_env=self.prediction_log_password_env)
            source = self._pg_log
        return rolling_metrics(*labelled_predictions_since(source, now - self.window_s), min_rows=self.min_rows)

    def _make_gauges(self) -> dict[str, Any]:
        from ray.util.metrics import Gauge

        return {"psi": Gauge("mlops_feature_psi", description="PSI of the feature over the serving window against "
                             "the training reference (all replicas).", tag_keys=("feature",)),
                "null": Gauge("mlops_feature_null_share", description="Share of null values of the feature over the "
                              "serving window (all replicas).", tag_keys=("feature",)),
                "rolling": Gauge("mlops_rolling_metric", description="Accuracy, F1, ROC AUC of the feedback labels "
                                 "received over the window.", tag_keys=("metric",)),
                "rows": Gauge("mlops_window_records", description="Records answered over the drift window (all "
                              "replicas).")}

    def export(self, now: float | None = None) -> dict[str, Any]:
        """Compute :meth:`drift` and :meth:`rolling` and set the gauges (NaN where undefined); returns both."""
        now = time.time() if now is None else now
        d, r = self.drift(now), self.rolling(now)
        if self._gauges is None:
            self._gauges = self._make_gauges()
        g = self._gauges
        nan = float("nan")
        for name, f in d["features"].items():
            g["psi"].set(nan if f["psi"] is None else f["psi"], tags={"feature": name})
            g["null"].set(nan if f["null_share"] is None else f["null_share"], tags={"feature": name})
        for m in ROLLING_METRICS:
            g["rolling"].set(nan if r[m] is None else r[m], tags={"metric": m})
        g["rows"].set(d["rows"])
        return {"drift": d, "rolling": r}


def start_drift_monitor(ray, cfg, reference: DriftReference, prediction_log_path: str | Path | None,
                        name: str = MONITOR_ACTOR_NAME, namespace: str = MONITOR_NAMESPACE,
                        prediction_log_password_env: str | None = None):
    """Start (or find) the detached monitor actor ``namespace/name``; returns its handle.

    Args:
        ray: the connected ``ray`` module.
        cfg: the ``monitor`` slice (:class:`mlops_ray.config.MonitorConfig`): window, export interval, min rows.
        prediction_log_path: the SQLite prediction log the feedback is joined in, or the PostgreSQL log's URL
            (None: no rolling metrics).
        prediction_log_password_env: the PostgreSQL log's password variable (read in the actor's process).
    """
    actor = ray.remote(DriftMonitor).options(name=name, namespace=namespace, lifetime="detached",
                                             get_if_exists=True, num_cpus=0, max_restarts=-1)
    handle = actor.remote(reference, cfg.window_s, None if prediction_log_path is None else str(prediction_log_path),
                          cfg.export_interval_s, cfg.min_window_rows, 10, prediction_log_password_env)
    ray.get(handle.set_reference.remote(reference))  # an actor found running may watch an older champion
    return handle
