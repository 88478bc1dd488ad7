"""The project's exception types: one base, one subclass per kind of failure.

Every message follows scikit-learn's form: what was wrong, what was expected, what came,
and what to do about it.
"""

from __future__ import annotations


class MlopsRayError(Exception):
    """Base class of every error mlops_ray raises on purpose."""


class ConfigError(MlopsRayError):
    """The pipeline YAML is missing, unreadable or does not validate (CLI exit code 2)."""


class EnvironmentSetupError(MlopsRayError):
    """A required system component (Java, a package extra) is missing; the message says how to get it."""


class DataError(MlopsRayError):
    """Input data does not match what a stage expects (missing column, empty split...)."""


class SourceUnavailableError(MlopsRayError):
    """A data source did not answer (connection refused, timeout, retried HTTP status); a later retry may succeed."""


class StageError(MlopsRayError):
    """A pipeline stage failed; carries the stage name and the command that resumes the run.

    Attributes:
        stage: name of the failed stage (``ingest`` ... ``smoke``).
        run_id: the run record the failure was written to.
        resume_command: the exact CLI command that continues the run from ``stage``.
    """

    def __init__(self, stage: str, run_id: str, cause: BaseException, resume_command: str):
        self.stage = stage
        self.run_id = run_id
        self.cause = cause
        self.resume_command = resume_command
        super().__init__(
            f"Stage '{stage}' of run {run_id} failed: {type(cause).__name__}: {cause}\n"
            f"Fix the cause, then resume with:\n  {resume_command}"
        )


class RegistryError(MlopsRayError):
    """A model name, version or alias does not exist in the registry, or an artifact is invalid."""


class TuneError(MlopsRayError):
    """The hyperparameter search produced no usable trial."""


class NotFittedError(MlopsRayError):
    """An estimator-style object was used before ``fit``."""
