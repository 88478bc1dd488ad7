"""HTTP JSON APIs: pagination, retries with backoff, timeouts and malformed pages, against a real local server."""

from __future__ import annotations

import json
import time

import pytest

from mlops_ray.config import HttpSourceConfig
from mlops_ray.errors import DataError, EnvironmentSetupError, SourceUnavailableError
from mlops_ray.ingest.http import http_frame, http_pages, value_at
from tests.ingest.conftest import FLIGHTS_COLUMNS, FLIGHTS_DDL, flights_records

pytestmark = pytest.mark.timeout(120)

RECORDS = flights_records(250)
PAGE = 100


def http(api, path: str, **kw) -> HttpSourceConfig:
    kw.setdefault("backoff_factor_s", 0.01)
    kw.setdefault("timeout_s", 5)
    return HttpSourceConfig(type="http", url=api.url(path), **kw)


def numbered_pages(query, n):
    """?page=1.. of RECORDS, PAGE per page under data.items; page 2 answers 503 the first time."""
    page = int(query["page"])
    if page == 2 and n == 1:
        return 503, {"error": "busy"}
    return 200, {"data": {"items": RECORDS[(page - 1) * PAGE: page * PAGE]}, "page": page}


def rows_of(df) -> list[tuple]:
    return sorted(tuple(r[c] for c in FLIGHTS_COLUMNS) for r in df.collect())


def expected_rows(records=RECORDS) -> list[tuple]:
    return sorted(tuple(r[c] for c in FLIGHTS_COLUMNS) for r in records)


def test_page_number_pagination_survives_a_transient_503(spark, api):
    api.routes["/flights"] = numbered_pages
    src = http(api, "/flights", pagination="page_number", records_path="data.items", schema_ddl=FLIGHTS_DDL)
    df = http_frame(spark, "flights", src)
    assert df.columns == [*FLIGHTS_COLUMNS, "_corrupt_record"]
    assert df.schema["dep_delay"].dataType.simpleString() == "double"
    assert rows_of(df) == expected_rows()
    assert df.filter("_corrupt_record IS NOT NULL").count() == 0
    # pages 1-3 hold records, page 4 is empty (the end); page 2 was asked twice (503, then 200)
    assert dict(api.hits) == {"/flights?page=1": 1, "/flights?page=2": 2, "/flights?page=3": 1, "/flights?page=4": 1}


def test_cursor_pagination_with_page_size(spark, api):
    def pages(query, n):
        start, size = int(query.get("cursor", 0)), int(query["limit"])
        end = start + size
        return 200, {"items": RECORDS[start:end], "meta": {"next": str(end) if end < len(RECORDS) else None}}

    api.routes["/cursor"] = pages
    src = http(api, "/cursor", pagination="cursor", records_path="items", next_path="meta.next",
               page_size_param="limit", page_size=60, schema_ddl=FLIGHTS_DDL)
    assert rows_of(http_frame(spark, "flights", src)) == expected_rows()
    assert sorted(api.hits) == ["/cursor?limit=60", "/cursor?limit=60&cursor=120", "/cursor?limit=60&cursor=180",
                                "/cursor?limit=60&cursor=240", "/cursor?limit=60&cursor=60"]


def test_next_link_pagination_follows_relative_links(api):
    def pages(query, n):
        k = int(query.get("k", 0))
        return 200, {"results": [{"k": k}], "links": {"next": f"/linked?k={k + 1}" if k < 4 else None}}

    api.routes["/linked"] = pages
    src = http(api, "/linked", pagination="next_link", records_path="results", next_path="links.next")
    assert [r for page in http_pages("t", src) for r in page] == [{"k": k} for k in range(5)]


def test_retries_back_off_exponentially_then_name_url_page_and_status(api):
    api.routes["/down"] = lambda q, n: (503, {"error": "still down"})
    src = http(api, "/down", max_retries=3, backoff_factor_s=0.1, query_params={"region": "ny"})
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailableError,
                       match=rf"table 'weather': page 1 \(GET {api.url('/down')}\?region=ny\) failed after 3 retries; "
                             r"last status 503 Service Unavailable; body starts '\{\"error\": \"still down\"\}'"):
        list(http_pages("weather", src))
    waited = time.monotonic() - t0
    assert api.hits["/down?region=ny"] == 4  # the request and 3 retries
    assert 0.1 * (2 + 4) <= waited < 5  # urllib3 Retry: 0 s, then 0.2 s, then 0.4 s


def test_a_status_that_is_not_retried_fails_at_once(api):
    api.routes["/gone"] = lambda q, n: (404, {"error": "gone"})
    with pytest.raises(DataError, match=r"page 1 \(GET .*/gone\) answered 404 Not Found, which is not retried"):
        list(http_pages("t", http(api, "/gone")))
    assert api.hits["/gone"] == 1


def test_a_timeout_is_retried_then_reported(api):
    def slow(query, n):
        time.sleep(1.0)
        return 200, []

    api.routes["/slow"] = slow
    src = http(api, "/slow", timeout_s=0.2, max_retries=1)
    with pytest.raises(SourceUnavailableError, match=r"page 1 \(GET .*/slow\) failed after 1 retries; last error: "
                                                     r"ConnectionError: .*Read timed out"):
        list(http_pages("t", src))
    assert api.hits["/slow"] == 2


def test_a_malformed_page_once_is_a_data_error_naming_the_page(spark, api):
    def pages(query, n):
        page = int(query["page"])
        if page == 2 and n == 1:
            return 200, "<html>502 Bad Gateway</html>"
        return numbered_pages(query, 2)

    api.routes["/flaky"] = pages
    src = http(api, "/flaky", pagination="page_number", records_path="data.items", schema_ddl=FLIGHTS_DDL)
    with pytest.raises(DataError, match=r"table 'flights': page 2 \(GET .*/flaky\?page=2\) is not JSON \(.*\); "
                                        r"the body starts '<html>502 Bad Gateway</html>'"):
        http_frame(spark, "flights", src)
    assert "/flaky?page=3" not in api.hits  # it stopped at the bad page


def test_a_page_without_the_records_key_names_the_page_and_its_keys(api):
    def pages(query, n):
        page = int(query["page"])
        return 200, ({"data": {"items": [{"a": 1}]}} if page == 1 else {"data": {"error": "quota exceeded"}})

    api.routes["/nokey"] = pages
    src = http(api, "/nokey", pagination="page_number", records_path="data.items")
    with pytest.raises(DataError, match=r"page 2 \(.*/nokey\) has no records at 'data\.items'; the page holds "
                                        r"\['data'\]"):
        list(http_pages("t", src))


def test_records_that_are_not_a_list_are_a_data_error(api):
    api.routes["/obj"] = lambda q, n: (200, {"items": {"a": 1}})
    with pytest.raises(DataError, match=r"page 1 .*the value at 'items' is a dict; expected a list of records"):
        list(http_pages("t", http(api, "/obj", records_path="items")))


def test_a_cursor_that_never_ends_stops_at_max_pages(api):
    api.routes["/loop"] = lambda q, n: (200, {"items": [{"a": 1}], "next": "again"})
    src = http(api, "/loop", pagination="cursor", records_path="items", next_path="next", max_pages=5)
    with pytest.raises(DataError, match=r"more than max_pages \(5\) pages from .*/loop; raise max_pages"):
        list(http_pages("t", src))
    assert sum(api.hits.values()) == 5


def test_records_that_do_not_fit_the_schema_are_kept_in_corrupt_record(spark, api):
    records = [{"id": 1, "name": "a"}, {"id": "not a number", "name": "b"}, 7]
    api.routes["/mixed"] = lambda q, n: (200, records)
    df = http_frame(spark, "t", http(api, "/mixed", schema_ddl="id INT, name STRING"))
    got = sorted((r["id"] or 0, r["name"] or "", r["_corrupt_record"] or "") for r in df.collect())
    assert got == [(0, "", "7"), (0, "b", json.dumps(records[1])), (1, "a", "")]


def test_without_a_schema_values_are_strings_unless_inference_is_chosen(spark, api):
    api.routes["/plain"] = lambda q, n: (200, [{"id": 1, "x": 2.5}, {"id": 2, "x": None}])
    strings = http_frame(spark, "t", http(api, "/plain"))
    inferred = http_frame(spark, "t", http(api, "/plain", infer_schema=True))
    assert dict(strings.dtypes) == {"id": "string", "x": "string", "_corrupt_record": "string"}
    assert dict(inferred.dtypes) == {"id": "bigint", "x": "double", "_corrupt_record": "string"}


def test_a_bearer_token_comes_from_the_environment(api, monkeypatch):
    def guarded(query, n):
        return (200, [{"ok": True}]) if api.headers_seen[-1].get("Authorization") == "Bearer t0ken" else (401, {})

    api.routes["/private"] = guarded
    monkeypatch.setenv("TEST_API_TOKEN", "t0ken")
    assert list(http_pages("t", http(api, "/private", bearer_token_env="TEST_API_TOKEN"))) == [[{"ok": True}]]
    monkeypatch.delenv("TEST_API_TOKEN")
    with pytest.raises(EnvironmentSetupError, match=r"ingest\.tables\.t\.bearer_token comes from environment "
                                                    r"variable TEST_API_TOKEN, which is not set"):
        list(http_pages("t", http(api, "/private", bearer_token_env="TEST_API_TOKEN")))


def test_an_unreachable_server_is_reported_after_the_retries():
    from tests.conftest import free_port

    src = HttpSourceConfig(type="http", url=f"http://127.0.0.1:{free_port()}/x", max_retries=2,
                           backoff_factor_s=0.01)
    with pytest.raises(SourceUnavailableError, match=r"page 1 \(GET http://127\.0\.0\.1:\d+/x\) failed after 2 "
                                                     r"retries; last error: ConnectionError: .*refused"):
        list(http_pages("t", src))


@pytest.mark.parametrize("doc, path, want", [
    ({"a": {"b": [1, 2]}}, "a.b", [1, 2]),
    ({"a": {"b": [{"c": 3}]}}, "a.b.0.c", 3),
    ([1, 2], "", [1, 2]),
])
def test_value_at_follows_dotted_paths(doc, path, want):
    assert value_at(doc, path) == want
