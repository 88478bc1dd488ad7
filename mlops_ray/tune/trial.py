"""One Tune trial: fit a family in steps beside a watchdog, report every step, checkpoint the model.

The fit runs in a worker thread; the trial's own thread (the one Tune started) waits for the
fit's step results and calls ``tune.report`` for each. So a trial that hangs inside a one-shot
``fit`` (which Tune's stopping never reaches: it acts only on reports) is still stopped at
``tune.time_limit_per_trial_s``: the trial raises :class:`~mlops_ray.errors.TuneError` with the
reason, Tune marks it failed and ends its worker process (the hung fit thread ends with it), and
a marker beside the trial's attempt log makes a retry fail at once instead of hanging again.
Every call of the trainable appends a line to ``<attempts_dir>/<trial_id>.jsonl`` (kept in the
stage output as ``attempts/``): retries and resumed trials show there.
"""

from __future__ import annotations

import json
import math
import os
import queue
import resource
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_ray.errors import TuneError

TIME_LIMIT_MARKER = "time_limit_exceeded.json"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one experiment shares (from ``TuneConfig``)."""

    metric: str
    seed: int
    cpus: int
    class_weight: str | None = None
    iterations_per_report: int = 25
    time_limit_s: float | None = None
    attempts_dir: str | None = None  # shared folder: <trial_id>.jsonl per trial, time-limit markers
    checkpoint_at: tuple[int, ...] | None = None  # report numbers that checkpoint (None: every report)


def scheduler_milestones(grace_period: int, reduction_factor: float, max_t: int = 10_000) -> tuple[int, ...]:
    """The report numbers at which ASHA may stop a trial: ceil(grace_period * reduction_factor**k) <= max_t.

    ASHA (Ray Tune's AsyncHyperBandScheduler, one bracket) decides only when a trial's
    ``training_iteration`` first reaches a rung, so a trial can only end after one of these reports
    or its last one; checkpointing there (and at the last step) is enough.
    """
    out, k = [], 0
    while True:
        m = math.ceil(grace_period * reduction_factor ** k)
        if m > max_t:
            return tuple(out)
        out.append(m)
        k += 1


def validation_metrics(y_true, proba) -> dict[str, float]:
    """ROC AUC, PR AUC (average precision), F1 at 0.5 and log loss of ``proba`` (shape (n_rows,)) against 0/1 labels.

    A metric that is undefined on these labels (one class only) is NaN; so is every metric when a
    probability is not finite. Definitions: scikit-learn's ``roc_auc_score``,
    ``average_precision_score``, ``f1_score``, ``log_loss``.
    """
    import numpy as np
    from sklearn.metrics import average_precision_score, f1_score, log_loss, roc_auc_score

    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=float)
    if not np.all(np.isfinite(p)):
        return {"roc_auc": math.nan, "pr_auc": math.nan, "f1": math.nan, "log_loss": math.nan}
    two_classes = len(np.unique(y)) == 2
    return {"roc_auc": float(roc_auc_score(y, p)) if two_classes else math.nan,
            "pr_auc": float(average_precision_score(y, p)) if two_classes else math.nan,
            "f1": float(f1_score(y, (p >= 0.5).astype(int), zero_division=0)),
            "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))}


def report_trial(metrics: dict[str, Any], metric: str, checkpoint=None) -> None:
    """``tune.report`` for every family's trainable, after checking the configured metric.

    Raises:
        TuneError: ``metric`` is missing (names it and the keys that were reported) or is NaN/infinite.
            Tune marks just this trial failed, with this reason; the experiment goes on.
    """
    from ray import tune

    if metric not in metrics:
        raise TuneError(f"the trial reported no '{metric}' (tune.metric); it reported {sorted(metrics)}.")
    value = metrics[metric]
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TuneError(f"validation {metric} is {value} (not finite); the trial is failed and never chosen as best.")
    tune.report(metrics, checkpoint=checkpoint)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _uss_mb() -> float:
    import psutil

    return psutil.Process().memory_full_info().uss / 2**20


def _trial_id() -> str | None:
    from ray import tune

    try:
        return tune.get_context().get_trial_id()
    except Exception:  # noqa: BLE001 - outside a Tune trial (direct calls in tests)
        return None


def run_trial(config: dict[str, Any], data: dict[str, Any], settings: TrialSettings) -> None:
    """The trainable: fit ``config['family']`` with ``config[family]`` on ``data`` and report each step.

    Args:
        config: Tune's sampled config: ``{"family": str, <family>: {hyperparameter: value}}``.
        data: ``X_train`` (n_train, n_features) float64, ``y_train`` (n_train,), ``X_val``, ``y_val``:
            NumPy arrays from Ray's object store (read-only views, shared by every trial on a node).
        settings: the experiment's :class:`TrialSettings`.

    Every report holds the four validation metrics, ``iterations`` (boosting iterations, epochs, or
    1), ``cpu_s``/``wall_s`` (process CPU and wall seconds since the trial started), the thread
    limits seen inside the trial, ``peak_rss_mb``/``uss_mb`` of the worker process, ``node_id``,
    ``pid`` and whether the training arrays are shared read-only memory (``data_shared``).

    Raises:
        TuneError: the metric is missing or not finite, the fit failed, or the trial ran past
            ``time_limit_s`` (also on every retry of a trial that once did).
    """
    import ray

    from mlops_ray.tune import save_model
    from mlops_ray.tune.families import StopTraining, fit_in_steps
    from mlops_ray.tune.resources import cap_threads

    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no "Checkpoint successfully created" per step
    family = config["family"]
    params = dict(config.get(family) or {})
    trial_id = _trial_id()
    marker = None
    if settings.attempts_dir and trial_id:  # one line per call of the trainable: retries and resumes show here
        Path(settings.attempts_dir).mkdir(parents=True, exist_ok=True)
        marker = Path(settings.attempts_dir) / f"{trial_id}.{TIME_LIMIT_MARKER}"
        with open(Path(settings.attempts_dir) / f"{trial_id}.jsonl", "a") as f:
            f.write(json.dumps({"trial_id": trial_id, "pid": os.getpid(), "started": time.time(),
                                "family": family}) + "\n")
    if marker is not None and marker.exists():
        raise TuneError(json.loads(marker.read_text())["reason"] + " (an earlier attempt; not retried)")
    X_tr, y_tr, X_va, y_va = data["X_train"], data["y_train"], data["X_val"], data["y_val"]
    fixed = {"family": family, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
             "data_shared": bool(not X_tr.flags.writeable and not X_va.flags.writeable)}
    steps: queue.Queue = queue.Queue()
    acks: queue.Queue = queue.Queue()
    stop = threading.Event()
    cpu0, wall0 = time.process_time(), time.monotonic()

    reports = [0]

    def on_step(model, iterations: int, final: bool) -> None:  # in the fit thread
        scores = validation_metrics(y_va, model.predict_proba(X_va)[:, 1])
        reports[0] += 1
        d = None
        # a checkpoint costs a model dump (0.6 s for 100 trees): only where the trial may end
        if final or settings.checkpoint_at is None or reports[0] in settings.checkpoint_at:
            d = tempfile.mkdtemp(prefix="mlops_ray-ckpt-")
            save_model(model, d)
            (Path(d) / "params.json").write_text(json.dumps({"family": family, "params": params,
                                                              "iterations": iterations, "scores": scores},
                                                             default=float))
        steps.put(("step", {**scores, "iterations": iterations, "cpu_s": time.process_time() - cpu0,
                            "wall_s": time.monotonic() - wall0, "peak_rss_mb": _peak_rss_mb(), "uss_mb": _uss_mb(),
                            **fixed, **{f"threads_{k}": v for k, v in limits.items()}}, d))
        acks.get()  # wait until the trial thread reported it (or told the fit to stop)
        if stop.is_set():
            raise StopTraining("the trial was stopped")

    def fit() -> None:  # in the fit thread
        try:
            fit_in_steps(family, params, X_tr, y_tr, seed=settings.seed, n_jobs=settings.cpus,
                         class_weight=settings.class_weight, iterations_per_report=settings.iterations_per_report,
                         on_step=on_step, stop=stop)
            steps.put(("done", None, None))
        except StopTraining:
            steps.put(("done", None, None))
        except BaseException as e:  # noqa: BLE001 - handed to the trial thread, which raises it
            steps.put(("error", e, None))

    with cap_threads(settings.cpus, tensorflow=(family == "keras_mlp")) as limits:
        worker = threading.Thread(target=fit, name=f"fit-{family}", daemon=True)
        worker.start()
        deadline = None if settings.time_limit_s is None else wall0 + settings.time_limit_s
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    kind, payload, ckpt = steps.get(timeout=timeout)
                except queue.Empty:
                    reason = (f"trial exceeded tune.time_limit_per_trial_s = {settings.time_limit_s:g} s "
                              f"({family}, {params}); stopped from outside the fit")
                    if marker is not None:
                        marker.write_text(json.dumps({"reason": reason}))
                    raise TuneError(reason) from None
                if kind == "done":
                    return
                if kind == "error":
                    raise TuneError(f"{family} fit failed: {type(payload).__name__}: {payload}") from payload
                try:
                    from ray import tune

                    report_trial(payload, settings.metric,
                                 checkpoint=tune.Checkpoint.from_directory(ckpt) if ckpt else None)
                finally:
                    if ckpt:
                        shutil.rmtree(ckpt, ignore_errors=True)
                acks.put(True)
        finally:
            stop.set()
            acks.put(False)  # release a fit thread waiting for its acknowledgement
