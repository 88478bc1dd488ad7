"""Resolves ``MLOPS_RAY_HOME``: the only code that knows where run state lives.

Layout (../shared/CONTRACTS.md)::

    $MLOPS_RAY_HOME/runs/<run_id>/run.json
    $MLOPS_RAY_HOME/cache/<stage>/<fingerprint>/
    $MLOPS_RAY_HOME/mlflow.db, mlartifacts/
    $MLOPS_RAY_HOME/predictions/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "MLOPS_RAY_HOME"
DEFAULT_DIRNAME = ".mlops_ray"


@dataclass(frozen=True)
class Home:
    """An absolute state root and the paths under it.

    Attributes:
        root: absolute path of ``MLOPS_RAY_HOME``.
    """

    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike | None = None) -> "Home":
        """Home from ``explicit``, else ``$MLOPS_RAY_HOME``, else ``./.mlops_ray``; always absolute."""
        raw = explicit or os.environ.get(ENV_VAR) or DEFAULT_DIRNAME
        return cls(Path(raw).expanduser().resolve())

    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir() / run_id

    def cache_dir(self, stage: str, fingerprint: str) -> Path:
        return self.root / "cache" / stage / fingerprint

    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def mlflow_artifact_root(self) -> str:
        return (self.root / "mlartifacts").as_uri()

    def ensure(self) -> "Home":
        """Create the root folder (idempotent) and return self."""
        self.root.mkdir(parents=True, exist_ok=True)
        return self
