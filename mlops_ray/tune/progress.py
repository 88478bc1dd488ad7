"""One log line per finished trial: the tune stage's progress display (replaces Tune's console tables)."""

from __future__ import annotations

import logging

from ray.tune import Callback

logger = logging.getLogger(__name__)


class TrialProgress(Callback):
    """Logs ``trial k/N <family> (<id>): roc_auc=…, log_loss=… after <steps> step(s), <s> s`` at INFO.

    A module-level class so Tune can pickle it into the experiment state (for resume).
    """

    def __init__(self, total: int):
        self.total = total
        self.done = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        r = trial.last_result or {}
        scores = ", ".join(f"{k}={r[k]:.4f}" for k in ("roc_auc", "log_loss") if k in r)
        logger.info("trial %d/%d %s (%s): %s after %s step(s), %.1f s", self.done, self.total,
                    r.get("family", trial.config.get("family")), trial.trial_id, scores, r.get("iterations", "?"),
                    r.get("wall_s", 0.0))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        logger.info("trial %d/%d %s (%s) failed", self.done, self.total, trial.config.get("family"), trial.trial_id)
