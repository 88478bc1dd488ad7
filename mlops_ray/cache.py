"""Content-addressed stage outputs under ``$MLOPS_RAY_HOME/cache/<stage>/<key>/``.

A stage's key hashes its inputs (upstream keys or file digests), its config slice and the
code version of the package. A folder is complete only when its ``_SUCCESS`` marker
exists; it is built in a temporary sibling and renamed into place, so a crash never leaves
a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mlops_ray.home import Home

_CODE_VERSION: dict[str, str] = {}


def code_version(stage_package: str) -> str:
    """SHA-256 over the source files of ``mlops_ray.<stage_package>`` (so code changes invalidate caches)."""
    if stage_package not in _CODE_VERSION:
        root = resources.files("mlops_ray")
        target = root / stage_package if (root / stage_package).is_dir() else root / f"{stage_package}.py"
        h = hashlib.sha256()
        paths = sorted(Path(str(target)).rglob("*.py")) if Path(str(target)).is_dir() else [Path(str(target))]
        for p in paths:
            h.update(p.name.encode())
            h.update(p.read_bytes())
        _CODE_VERSION[stage_package] = h.hexdigest()
    return _CODE_VERSION[stage_package]


def cache_key(*parts: object) -> str:
    """First 16 hex digits of SHA-256 over the JSON of ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    """One stage output folder; ``hit`` tells whether it was reused."""

    path: Path
    hit: bool


def cached(home: Home, stage: str, key: str, build: Callable[[Path], None]) -> CacheEntry:
    """Reuse ``cache/<stage>/<key>`` when complete, else build it with ``build(tmp_dir)``."""
    final = home.cache_dir(stage, key)
    if (final / "_SUCCESS").exists():
        return CacheEntry(final, hit=True)
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / "_SUCCESS").write_text("")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return CacheEntry(final, hit=False)
