"""Model URIs: ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (MLflow's forms)."""

from __future__ import annotations

import re

from mlops_ray.errors import RegistryError

_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.-]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version).

    Raises:
        RegistryError: the URI has another shape.
    """
    m = _URI.match(uri)
    if not m:
        raise RegistryError(f"model URI '{uri}' is not valid; expected models:/NAME@ALIAS or models:/NAME/VERSION "
                            "(e.g. models:/flights@champion).")
    return m.group("name"), m.group("alias"), m.group("version")
