"""Secrets of ingest sources (database user and password, API tokens): from the environment or a file.

The YAML names where a secret lives (``password_env: PGPASSWORD`` or ``password_file: /run/secrets/pg``),
never the secret itself, so configs, run records and cache keys hold no credentials.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlops_ray.errors import EnvironmentSetupError


def secret_value(what: str, env: str | None, file: str | None) -> str | None:
    """The secret from environment variable ``env`` or file ``file``; None when neither is configured.

    Args:
        what: the secret's config path without suffix, e.g. ``ingest.tables.flights.password``; used in errors.
        env: name of the environment variable, or None.
        file: path of a file whose content (trailing newline removed) is the secret, or None.

    Raises:
        EnvironmentSetupError: the variable is not set, or the file is missing or unreadable.
    """
    if env:
        value = os.environ.get(env)
        if value is None:
            raise EnvironmentSetupError(
                f"{what} comes from environment variable {env}, which is not set. Export {env} before the run "
                f"(or set {what.rsplit('.', 1)[-1]}_file to a file holding it).")
        return value
    if file:
        path = Path(file).expanduser()
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise EnvironmentSetupError(
                f"{what} comes from file {path}, which cannot be read ({exc.strerror or exc}). Create it or fix "
                f"{what.rsplit('.', 1)[-1]}_file.") from None
    return None
