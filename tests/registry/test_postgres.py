"""The registry on a real PostgreSQL server (Debian's postgresql, started on loopback here)."""

from __future__ import annotations

import pytest

from mlops_ray.home import Home
from mlops_ray.registry import download_version, list_versions
from tests.registry.conftest import register_from_run

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def postgres_uri(postgres):
    """A database 'mlflow' on the session's PostgreSQL server (tests/conftest.py, loopback, free port)."""
    return postgres.create_database("mlflow")


def test_register_and_load_with_a_postgresql_backend(pipeline_run, postgres_uri, tmp_path):
    import sqlalchemy

    cfg, _, record = pipeline_run
    pg_cfg = cfg.model_copy(update={"register_": cfg.register_.model_copy(update={
        "tracking_uri": postgres_uri, "artifact_root": (tmp_path / "artifacts").as_uri()})})
    home = Home.resolve(tmp_path / "home").ensure()
    v = register_from_run(pg_cfg, home, record, run_id="pg")
    assert (v.version, v.alias) == ("1", "champion")
    assert [r["version"] for r in list_versions(pg_cfg.register_, home)] == ["1"]
    mv, local = download_version(pg_cfg.register_, home, "models:/flights@champion", tmp_path / "dl")
    assert (local / "model.skops").is_file()
    assert not (home.root / "mlflow.db").exists()  # nothing went to the SQLite default
    with sqlalchemy.create_engine(postgres_uri).connect() as conn:
        rows = conn.execute(sqlalchemy.text("select name, version from model_versions")).fetchall()
    assert [(r[0], str(r[1])) for r in rows] == [("flights", "1")]
