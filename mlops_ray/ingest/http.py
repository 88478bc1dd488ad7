"""Tables from paginated HTTP JSON APIs: GET page after page, with timeouts and retries.

Retries use urllib3's ``Retry`` mounted on a ``requests`` session: a connection error, a timeout
or a status in ``retry_statuses`` is retried ``max_retries`` times with exponential backoff
(``backoff_factor_s * 2 ** (n - 1)`` s before the n-th retry, the first at once, capped at
``max_backoff_s``; ``Retry-After`` honoured). After the last retry the error names the URL, the
page and the last status or exception. A page that is not JSON, or lacks the records list, is
a DataError naming the page. The records are parsed by Spark's JSON reader, so a record that
does not fit the declared schema is kept with its JSON in ``_corrupt_record``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from mlops_ray.config import HttpSourceConfig
from mlops_ray.errors import DataError, SourceUnavailableError
from mlops_ray.ingest.files import CORRUPT_RECORD, json_schema
from mlops_ray.ingest.secrets import secret_value

if TYPE_CHECKING:  # pragma: no cover
    import requests
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

_MISSING = object()


def value_at(doc: Any, path: str) -> Any:
    """The value at dot-separated ``path`` in a JSON document ('' = the document); a sentinel when absent.

    A key that is a whole number also indexes a list (``items.0.id``).
    """
    node = doc
    for key in path.split(".") if path else []:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.lstrip("-").isdigit() and -len(node) <= int(key) < len(node):
            node = node[int(key)]
        else:
            return _MISSING
    return node


def http_session(src: HttpSourceConfig, token: str | None) -> "requests.Session":
    """A requests session whose adapters retry per ``src`` (urllib3 ``Retry``), with the JSON headers."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util import Retry

    retry = Retry(total=src.max_retries, connect=src.max_retries, read=src.max_retries, status=src.max_retries,
                  other=0, backoff_factor=src.backoff_factor_s, backoff_max=src.max_backoff_s,
                  status_forcelist=src.retry_statuses, allowed_methods=frozenset({"GET"}),
                  raise_on_status=False, respect_retry_after_header=True)
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"Accept": "application/json", **src.headers})
    if token is not None:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _get_page(session: "requests.Session", src: HttpSourceConfig, table: str, page: int, url: str,
              params: dict[str, Any]) -> Any:
    """GET one page and parse it as JSON.

    Raises:
        SourceUnavailableError: after the last retry (connection error, timeout, a retried status).
        DataError: a status that is not retried, or a body that is not JSON.
    """
    import requests

    shown = requests.Request("GET", url, params=params).prepare().url
    where = f"ingest: table '{table}': page {page} (GET {shown})"
    try:
        resp = session.get(url, params=params, timeout=src.timeout_s)
    except requests.RequestException as exc:
        raise SourceUnavailableError(f"{where} failed after {src.max_retries} retries; last error: "
                                     f"{type(exc).__name__}: {exc}") from None
    if resp.status_code >= 400:
        history = getattr(getattr(resp.raw, "retries", None), "history", ()) or ()
        body = resp.text[:200]
        if resp.status_code in src.retry_statuses:
            raise SourceUnavailableError(f"{where} failed after {len(history)} retries; last status "
                                         f"{resp.status_code} {resp.reason}; body starts {body!r}.")
        raise DataError(f"{where} answered {resp.status_code} {resp.reason}, which is not retried (retry_statuses "
                        f"= {list(src.retry_statuses)}); body starts {body!r}.")
    try:
        return resp.json()
    except ValueError as exc:
        raise DataError(f"{where} is not JSON ({exc}); the body starts {resp.text[:200]!r}. Expected a JSON "
                        f"document with the records at {src.records_path or 'the top level'!r}.") from None


def _records(doc: Any, src: HttpSourceConfig, table: str, page: int, url: str) -> list:
    records = value_at(doc, src.records_path)
    where = f"ingest: table '{table}': page {page} ({url})"
    if records is _MISSING:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{where} has no records at {src.records_path!r}; the page holds {keys}. Fix records_path "
                        f"or the API.")
    if not isinstance(records, list):
        raise DataError(f"{where}: the value at {src.records_path or 'the top level'!r} is a "
                        f"{type(records).__name__}; expected a list of records.")
    return records


def http_pages(table: str, src: HttpSourceConfig) -> Iterator[list]:
    """The records of each page, in order, following the configured pagination.

    Raises:
        EnvironmentSetupError: the bearer token's variable or file is missing.
        SourceUnavailableError: a request still failed after its last retry.
        DataError: a page is not JSON, lacks the records, answers a status that is not retried, or there are
            more than ``max_pages`` pages.
    """
    token = secret_value(f"ingest.tables.{table}.bearer_token", src.bearer_token_env, src.bearer_token_file)
    sizing = {src.page_size_param: src.page_size} if src.page_size_param else {}
    url: str | None = src.url
    params: dict[str, Any] = {**src.query_params, **sizing}
    if src.pagination == "page_number":
        params[src.page_param] = src.first_page
    with http_session(src, token) as session:
        for page in range(1, src.max_pages + 1):
            doc = _get_page(session, src, table, page, url, params)
            records = _records(doc, src, table, page, url)
            yield records
            if src.pagination == "none":
                return
            if src.pagination == "page_number":
                if not records:
                    return
                params = {**params, src.page_param: params[src.page_param] + 1}
                continue
            nxt = value_at(doc, src.next_path or "")
            if nxt is _MISSING or nxt is None or nxt == "":
                return
            if src.pagination == "cursor":
                params = {**params, src.cursor_param: nxt}
            else:  # next_link: followed as given (relative links resolved against the page's URL)
                url, params = urljoin(url, str(nxt)), {}
        raise DataError(f"ingest: table '{table}': more than max_pages ({src.max_pages}) pages from {src.url}; "
                        f"raise max_pages, or check next_path / page_param if the pages never end.")


def http_frame(spark: "SparkSession", table: str, src: HttpSourceConfig) -> "DataFrame":
    """All records of a paginated API as a DataFrame, with the declared (or opted-in inferred) schema.

    The records are held in driver memory before Spark parses them; an API table is expected to fit there.

    Returns:
        DataFrame of shape (n_records, n_columns + 1); a record that does not fit the schema (or is not an
        object) has its JSON in ``_corrupt_record``.

    Raises:
        See :func:`http_pages`; ConfigError when ``schema_ddl`` does not parse.
    """
    lines: list[str] = []
    pages = 0
    for records in http_pages(table, src):
        pages += 1
        lines.extend(json.dumps(r, ensure_ascii=False) for r in records)
    logger.info("ingest: %s: %d records from %d pages of %s", table, len(lines), pages, src.url)
    sc = spark.sparkContext
    rdd = sc.parallelize(lines, max(1, min(sc.defaultParallelism, len(lines) // 10_000 + 1)))
    schema = json_schema(spark.read, rdd, src.schema_ddl, src.infer_schema, f"ingest.tables.{table}.schema_ddl")
    return (spark.read.option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", CORRUPT_RECORD)
            .schema(schema).json(rdd))
