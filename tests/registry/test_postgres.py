"""The registry on a real PostgreSQL server (Debian's postgresql, started on loopback here)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from mlops_ray.home import Home
from mlops_ray.registry import download_version, list_versions
from tests.conftest import free_port
from tests.registry.conftest import register_from_run

pytestmark = pytest.mark.timeout(600)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: scripts/test.sh installs Debian's postgresql package")
    return found[-1]


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:  # initdb refuses to run as root
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kw)


@pytest.fixture(scope="module")
def postgres_uri():
    """A PostgreSQL server on 127.0.0.1:<free port> with a database 'mlflow'; stopped afterwards."""
    root = tempfile.mkdtemp(prefix="mlops_ray_pg_")
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.makedirs(sock)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    _as_postgres([_pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    port = free_port()
    _as_postgres([_pg_bin("pg_ctl"), "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60", "-o",
                  f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"])
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail("PostgreSQL did not accept connections within 30 s")
            time.sleep(0.5)
        subprocess.run([_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"], check=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        _as_postgres([_pg_bin("pg_ctl"), "-D", data, "-m", "fast", "stop"])
        shutil.rmtree(root, ignore_errors=True)


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
