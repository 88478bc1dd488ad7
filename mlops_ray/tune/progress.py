"""The tune stage's Tune callbacks: one log line per finished trial (the progress display, replacing
Tune's console tables) and a consistent snapshot of the experiment state at each save.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune import Callback

from mlops_ray.tune.storage import take_snapshot

logger = logging.getLogger(__name__)


class TrialProgress(Callback):
    """Logs ``trial k/N <family> (<id>): roc_auc=…, log_loss=… after <steps> step(s), <s> s`` at INFO.

    A module-level class so Tune can pickle it into the experiment state (for resume).
    """

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def _count(self, trials, trial) -> None:
        """k = trials finished so far, counted from Tune's trial list (right after a resume too)."""
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        self.done = max(self.done + 1, len(ended))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        r = trial.last_result or {}
        scores = ", ".join(f"{k}={r[k]:.4f}" for k in ("roc_auc", "log_loss") if k in r)
        logger.info("trial %d/%d %s (%s): %s after %s step(s), %.1f s", self.done, self.total,
                    r.get("family", trial.config.get("family")), trial.trial_id, scores, r.get("iterations", "?"),
                    r.get("wall_s", 0.0))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial)
        logger.info("trial %d/%d %s (%s) failed", self.done, self.total, trial.config.get("family"), trial.trial_id)


class StateSnapshot(Callback):
    """Tune callback: a consistent copy of the experiment state at each save (see :mod:`mlops_ray.tune.storage`).

    Tune calls ``get_state`` of every callback from ``TuneController.save_to_dir``, after it has
    written the trial list and the searcher's state to the driver's staging folder and before it
    copies that folder to storage; this callback returns None (it has no state of its own) and
    copies those files with :func:`mlops_ray.tune.storage.take_snapshot`. The staging folder is read from the first
    trial's storage context (``experiment_driver_staging_path``).

    Args:
        folder: where the numbered snapshots go (``<experiment root>/state_snapshots``).
    """

    def __init__(self, folder: str):
        self.folder = folder
        self._staging: str | None = None

    def on_step_begin(self, iteration, trials, **info):
        if self._staging is None and trials:
            self._staging = trials[0].storage.experiment_driver_staging_path

    def get_state(self):
        if self._staging is not None:
            take_snapshot(Path(self._staging), Path(self.folder))
        return None

    def __getstate__(self):
        return {"folder": self.folder, "_staging": None}  # the staging folder belongs to one Ray session
