"""Pipeline configuration: one YAML file becomes one frozen, closed pydantic model.

This is the only module that turns YAML into objects. Every stage receives its own slice
(``run_tune(cfg.tune, ...)``); unknown keys are rejected everywhere (``extra="forbid"``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops_ray.errors import ConfigError

#: Columns that are only known after the flight happened; never features (no leakage).
OUTCOME_COLUMNS: tuple[str, ...] = ("dep_time", "dep_delay", "arr_time", "arr_delay", "air_time")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def fingerprint(self) -> str:
        """SHA-256 of the slice as canonical JSON (sorted keys); used in cache keys."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- engines
#: Accepted ``engines.spark.master`` forms: local mode, a standalone cluster (one master or an HA list), Connect.
SPARK_MASTER_FORMS = ("local", "local[*]", "local[N]", "local[N,MAX_FAILURES]", "spark://HOST:PORT[,HOST:PORT...]",
                      "sc://HOST[:PORT][/;PARAM=VALUE...]")
_SPARK_MASTER = (r"local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?"
                 r"|spark://[^\s/:,]+:[0-9]{1,5}(,[^\s/:,]+:[0-9]{1,5})*"
                 r"|sc://[^\s/:;]+(:[0-9]{1,5})?(/(;[^\s;=]+=[^\s;]*)*)?")


class SparkConfig(_Model):
    master: str = Field(
        "local[*]", description="Where Spark runs: local[*] or local[N] (inside this process, N cores), "
                               "spark://HOST:PORT (a standalone cluster, e.g. cluster/spark/start-standalone.sh), or "
                               "sc://HOST[:PORT] (a Spark Connect server; this process is a thin client and the "
                               "driver settings below belong to the server).")
    app_name: str = Field("mlops_ray", description="Spark application name.")
    driver_memory: str = Field("4g", description="spark.driver.memory; must be set before the session starts.")
    shuffle_partitions: Annotated[int, Field(ge=1, le=10_000)] = Field(
        4, description="spark.sql.shuffle.partitions; few partitions suit one small machine."
    )
    ui_enabled: bool = Field(False, description="Start the Spark UI (port 4040).")
    driver_host: str | None = Field(
        None, description="Address executors reach the driver at (spark.driver.host). None: 127.0.0.1 for a "
                          "local[...] master (nothing listens outside the machine); Spark's default (this host's "
                          "name) for a cluster master, whose executors run on other machines.")

    @model_validator(mode="after")
    def _master_form(self) -> "SparkConfig":
        import re

        if not re.fullmatch(_SPARK_MASTER, self.master):
            raise ValueError(f"engines.spark.master must be one of {', '.join(SPARK_MASTER_FORMS)}; got "
                             f"{self.master!r}. Use e.g. local[*], spark://127.0.0.1:7077 or sc://127.0.0.1:15002.")
        return self

    @property
    def is_local(self) -> bool:
        """True for a local[...] master (Spark runs inside this process)."""
        return self.master.startswith("local")

    @property
    def is_connect(self) -> bool:
        """True for an sc:// (Spark Connect) master."""
        return self.master.startswith("sc://")


class RayConfig(_Model):
    address: str | None = Field(
        None, description="Ray cluster address; None = RAY_ADDRESS or a new local Ray."
    )
    num_cpus: Annotated[int, Field(ge=1)] | None = Field(None, description="CPUs for a local Ray (None = all).")
    object_store_memory_bytes: Annotated[int, Field(ge=78_643_200)] | None = Field(
        None, description="Object store size of a local Ray, bytes (Ray's minimum is 75 MiB)."
    )
    include_dashboard: bool = Field(True, description="Start the Ray dashboard of a local Ray.")
    dashboard_port: Annotated[int, Field(ge=1, le=65535)] = Field(8265, description="Ray dashboard port.")
    metrics_export_port: Annotated[int, Field(ge=1, le=65535)] | None = Field(
        8080, description="Prometheus text export port of a local Ray node (None = Ray picks)."
    )
    metrics_report_interval_ms: Annotated[int, Field(ge=1000)] | None = Field(
        None, description="How often each process of a local Ray exports its metrics, ms (Ray's "
                          "RAY_metrics_report_interval_ms, set before Ray starts; None = Ray's default, 10000; Ray "
                          "floors it at 1000). Lower it so Prometheus, dashboards and alert rules see requests within "
                          "seconds. A cluster joined by address keeps what its `ray start` had."
    )


class EnginesConfig(_Model):
    spark: SparkConfig = SparkConfig()
    ray: RayConfig = RayConfig()


# --------------------------------------------------------------------------- stages
def _secret_from_one_place(name: str, env: str | None, file: str | None) -> None:
    """A secret comes from an environment variable or a file, never both (and never from the YAML)."""
    if env and file:
        raise ValueError(f"{name}_env ({env!r}) and {name}_file ({file!r}) are both set; set one of them.")


class FileSourceConfig(_Model):
    """A table read from files by Spark: CSV, Parquet or JSON."""

    type: Literal["file"] = Field(description="Source kind: files read by Spark.")
    path: str = Field(
        min_length=1, description="A file, a folder or a glob: a local path or any Hadoop-compatible URI (file://, "
                                  "s3a://, hdfs://, abfss://...), handed to Spark as is. Local paths are digested for "
                                  "the cache key; other URIs are read and fingerprinted by content.")
    format: Literal["csv", "parquet", "json"] = Field(
        description="File format; 'json' is JSON Lines (one object per line) unless multi_line.")
    schema_ddl: str | None = Field(
        None, description="Declared schema as a Spark DDL string, e.g. 'year INT, carrier STRING, distance DOUBLE'. "
                          "Given: Spark reads with it and infers nothing; a CSV/JSON line whose values do not fit is "
                          "kept, its text in _corrupt_record.")
    infer_schema: bool = Field(
        False, description="CSV/JSON without schema_ddl only: opt in to Spark's schema inference (an extra pass over "
                           "the data; inferred types can differ from file to file). False: every CSV/JSON value is "
                           "read as a string.")
    header: bool = Field(True, description="CSV only: the first line holds the column names.")
    delimiter: str = Field(",", min_length=1, description="CSV only: the field separator.")
    null_value: str = Field("", description="CSV only: the string that stands for null, e.g. 'NA' (nycflights13).")
    multi_line: bool = Field(
        False, description="CSV: quoted values may span lines. JSON: each file is one JSON document (an array of "
                           "objects) instead of JSON Lines.")

    @model_validator(mode="after")
    def _consistent(self) -> "FileSourceConfig":
        if self.schema_ddl and self.infer_schema:
            raise ValueError("schema_ddl is set and infer_schema is true; a declared schema is never inferred. "
                             "Drop infer_schema or schema_ddl.")
        if self.format == "parquet" and self.infer_schema:
            raise ValueError("infer_schema applies to csv and json; got format 'parquet', whose files carry their "
                             "schema. Drop infer_schema.")
        csv_only = sorted({"header", "delimiter", "null_value"} & self.model_fields_set)
        if self.format != "csv" and csv_only:
            raise ValueError(f"{', '.join(csv_only)} apply to format 'csv' only; got format {self.format!r}. "
                             f"Remove them.")
        return self


class JdbcSourceConfig(_Model):
    """A table read from a SQL database through Spark JDBC, in parallel partitions."""

    type: Literal["jdbc"] = Field(description="Source kind: a SQL database through Spark JDBC.")
    url: str = Field(pattern=r"^jdbc:[a-z0-9]+:", description="JDBC URL without credentials, e.g. "
                     "jdbc:postgresql://db.example:5432/flights.")
    table: str | None = Field(None, description="Table (or view) to read, e.g. public.flights; or use query.")
    query: str | None = Field(None, description="SELECT to read instead of a table; it becomes a subquery, so it "
                                                "can be partitioned too.")
    driver_class: str = Field("org.postgresql.Driver", description="JDBC driver class name.")
    driver_jar: str = Field(
        "/usr/share/java/postgresql.jar", min_length=1,
        description="Path of the driver jar on the driver machine; added to spark.jars when the SparkSession starts "
                    "(Debian's libpostgresql-jdbc-java installs /usr/share/java/postgresql.jar).")
    user_env: str | None = Field(None, description="Environment variable holding the database user.")
    user_file: str | None = Field(None, description="File holding the database user (trailing newline ignored).")
    password_env: str | None = Field(None, description="Environment variable holding the password.")
    password_file: str | None = Field(
        None, description="File holding the password (trailing newline ignored), e.g. a mounted Kubernetes secret.")
    partition_column: str | None = Field(
        None, description="Numeric, date or timestamp column that splits the read into num_partitions ranges.")
    lower_bound: int | str | None = Field(
        None, description="Lower end of the partition stride (a number, or an ISO date/timestamp string). Bounds "
                          "only shape the ranges: rows outside them land in the first or last partition.")
    upper_bound: int | str | None = Field(None, description="Upper end (exclusive) of the partition stride.")
    num_partitions: Annotated[int, Field(ge=1, le=1_000)] = Field(
        1, description="Parallel reads (and at most this many open connections); > 1 needs partition_column.")
    fetch_size_rows: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        10_000, description="Rows fetched per database round trip (JDBC fetchsize).")
    query_timeout_s: Annotated[int, Field(ge=0)] = Field(
        0, description="Seconds a statement may run before the driver cancels it; 0 = no limit.")
    schema_ddl: str | None = Field(
        None, description="Spark types for some or all columns as a DDL string (Spark's customSchema), e.g. "
                          "'flight INT, distance DOUBLE'; other columns keep the driver's type mapping.")

    @model_validator(mode="after")
    def _consistent(self) -> "JdbcSourceConfig":
        if (self.table is None) == (self.query is None):
            raise ValueError(f"set exactly one of table and query; got table={self.table!r}, query={self.query!r}.")
        low = self.url.lower()
        if "password=" in low or "user=" in low:
            raise ValueError("url holds credentials (user= or password=); they never belong in the YAML. Remove "
                             "them and set user_env/password_env (or user_file/password_file).")
        _secret_from_one_place("user", self.user_env, self.user_file)
        _secret_from_one_place("password", self.password_env, self.password_file)
        bounds = {"lower_bound": self.lower_bound, "upper_bound": self.upper_bound}
        if self.partition_column is None:
            if any(v is not None for v in bounds.values()) or self.num_partitions > 1:
                raise ValueError(f"lower_bound, upper_bound and num_partitions > 1 need partition_column; got "
                                 f"partition_column=None, {bounds}, num_partitions={self.num_partitions}.")
            return self
        missing = [k for k, v in bounds.items() if v is None]
        if missing:
            raise ValueError(f"partition_column {self.partition_column!r} needs {' and '.join(missing)}; got none.")
        lo, hi = self.lower_bound, self.upper_bound
        if isinstance(lo, int) and isinstance(hi, int):
            if lo >= hi:
                raise ValueError(f"lower_bound ({lo}) must be < upper_bound ({hi}).")
            if hi - lo < self.num_partitions:
                raise ValueError(f"num_partitions ({self.num_partitions}) must be <= upper_bound - lower_bound "
                                 f"({hi - lo}); Spark would silently read fewer partitions.")
        elif type(lo) is not type(hi):
            raise ValueError(f"lower_bound ({lo!r}) and upper_bound ({hi!r}) must both be numbers or both be "
                             f"date/timestamp strings.")
        return self


class HttpSourceConfig(_Model):
    """A table read from a paginated HTTP JSON API (GET), with timeouts and retries."""

    type: Literal["http"] = Field(description="Source kind: an HTTP JSON API.")
    url: str = Field(pattern=r"^https?://", description="URL of the first page.")
    query_params: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Query parameters sent with every request (never secrets).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (never secrets).")
    bearer_token_env: str | None = Field(
        None, description="Environment variable holding a token sent as 'Authorization: Bearer <token>'.")
    bearer_token_file: str | None = Field(None, description="File holding that token (trailing newline ignored).")
    pagination: Literal["none", "page_number", "cursor", "next_link"] = Field(
        "none", description="'none': one request. 'page_number': page_param = first_page, first_page + 1, ... "
                            "until a page has no records. 'cursor': cursor_param = the value at next_path of the "
                            "previous page. 'next_link': GET the URL at next_path. Both stop where next_path is "
                            "missing, null or empty.")
    records_path: str = Field(
        "", description="Dot-separated keys of the records list in each page, e.g. 'data.items'; '' = the page "
                        "itself is the list.")
    next_path: str | None = Field(
        None, description="Dot-separated keys of the next cursor ('cursor') or next URL ('next_link'), e.g. "
                          "'meta.next_cursor'.")
    page_param: str = Field("page", min_length=1, description="Query parameter of the page number ('page_number').")
    first_page: Annotated[int, Field(ge=0)] = Field(1, description="Number of the first page ('page_number').")
    cursor_param: str = Field("cursor", min_length=1, description="Query parameter of the cursor ('cursor').")
    page_size_param: str | None = Field(None, description="Query parameter of the page size, sent with page_size.")
    page_size: Annotated[int, Field(ge=1)] | None = Field(None, description="Records per page asked for.")
    max_pages: Annotated[int, Field(ge=1)] = Field(
        10_000, description="Stop with an error after this many pages (guards against a cursor that never ends).")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        30.0, description="Per-request timeout, seconds (connect and each read).")
    max_retries: Annotated[int, Field(ge=0, le=20)] = Field(
        3, description="Retries of one request after a connection error, a timeout or a retry_statuses answer.")
    backoff_factor_s: Annotated[float, Field(ge=0)] = Field(
        0.5, description="Exponential backoff of urllib3's Retry: the n-th retry waits backoff_factor_s * "
                         "2 ** (n - 1) s (the first retry at once), capped at max_backoff_s; Retry-After is honoured.")
    max_backoff_s: Annotated[float, Field(gt=0)] = Field(60.0, description="Longest wait between two retries, s.")
    retry_statuses: tuple[Annotated[int, Field(ge=400, le=599)], ...] = Field(
        (429, 500, 502, 503, 504), description="HTTP statuses that are retried; any other error status fails at once.")
    schema_ddl: str | None = Field(
        None, description="Declared schema of the records as a Spark DDL string; a record that does not fit is "
                          "kept, its JSON in _corrupt_record.")
    infer_schema: bool = Field(
        False, description="Without schema_ddl: opt in to Spark's JSON type inference. False: every value is read "
                           "as a string.")

    @model_validator(mode="after")
    def _consistent(self) -> "HttpSourceConfig":
        if self.schema_ddl and self.infer_schema:
            raise ValueError("schema_ddl is set and infer_schema is true; a declared schema is never inferred. "
                             "Drop infer_schema or schema_ddl.")
        if self.pagination in ("cursor", "next_link") and not self.next_path:
            raise ValueError(f"pagination {self.pagination!r} needs next_path (where each page names the next); "
                             f"got none.")
        if self.pagination in ("none", "page_number") and self.next_path:
            raise ValueError(f"next_path ({self.next_path!r}) is read only by pagination 'cursor' or 'next_link'; "
                             f"got pagination {self.pagination!r}.")
        if (self.page_size_param is None) != (self.page_size is None):
            raise ValueError(f"page_size_param and page_size go together; got page_size_param="
                             f"{self.page_size_param!r}, page_size={self.page_size!r}.")
        if any(k.lower() == "authorization" for k in self.headers):
            raise ValueError("headers holds Authorization; secrets never belong in the YAML. Use "
                             "bearer_token_env or bearer_token_file.")
        _secret_from_one_place("bearer_token", self.bearer_token_env, self.bearer_token_file)
        return self


#: One table's source, chosen by its ``type`` key.
TableSource = Annotated[FileSourceConfig | JdbcSourceConfig | HttpSourceConfig, Field(discriminator="type")]


class IngestConfig(_Model):
    source: Literal["nycflights13", "files", "tables"] = Field(
        "nycflights13", description="'nycflights13': the tables shipped in the nycflights13 package; 'files': the "
                                    "CSVs in data_dir; 'tables': each table from its own source in `tables`."
    )
    data_dir: str | None = Field(
        None, description="Folder with flights.csv[.zip], weather.csv, planes.csv, airlines.csv (source='files')."
    )
    tables: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], TableSource] = Field(
        default_factory=dict, description="source='tables': table name -> its source (type file, jdbc or http). "
                                          "'flights' is required; the flights job also joins 'weather' and 'planes'."
    )
    main_table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = Field(
        "flights", description="The table of rows to learn from: validate checks it, preprocess builds features "
                               "from it, sample_fraction samples it. The flights job's is 'flights'; a job defined "
                               "by config alone (preprocess.recipe 'table') names its own, e.g. 'loans'.")
    sample_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="Bernoulli sample of the main table kept at ingest (1.0 = all rows); for quick runs and tests."
    )
    sample_seed: int = Field(13, description="Seed of the main-table sample.")

    @model_validator(mode="after")
    def _files_need_dir(self) -> "IngestConfig":
        if self.source == "files" and not self.data_dir:
            raise ValueError("ingest.data_dir is required when ingest.source is 'files'; got none. "
                             "Set ingest.data_dir to the folder holding flights.csv.")
        if self.source == "tables" and self.main_table not in self.tables:
            raise ValueError(f"ingest.tables must name the main table {self.main_table!r} (ingest.main_table) when "
                             f"ingest.source is 'tables'; got {sorted(self.tables)}.")
        if self.source != "tables" and self.main_table != "flights":
            raise ValueError(f"ingest.main_table {self.main_table!r} needs ingest.source 'tables' (the packaged and "
                             f"data_dir sources hold the flights tables only); got source {self.source!r}.")
        if self.source != "tables" and self.tables:
            raise ValueError(f"ingest.tables ({sorted(self.tables)}) is read only when ingest.source is 'tables'; "
                             f"got source {self.source!r}. Set source: tables or remove tables.")
        return self

    def spark_jars(self) -> tuple[str, ...]:
        """Jars the SparkSession needs on its classpath for this config (the JDBC drivers), sorted."""
        if self.source != "tables":
            return ()
        return tuple(sorted({s.driver_jar for s in self.tables.values() if isinstance(s, JdbcSourceConfig)}))


#: Spark types a ``type`` expectation can ask for (Spark SQL names; ``float`` is 32-bit, ``double`` 64-bit).
ColumnType = Literal["boolean", "int", "bigint", "float", "double", "string", "date", "timestamp"]

#: Name of an expectation as it appears in ``reason`` and in the counts: letters, digits and ``_:.,-``.
ExpectationName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:.,-]+$", max_length=200)]


def _iso_text(value: Any) -> Any:
    """YAML turns unquoted dates/timestamps into date/datetime objects; keep them as ISO-8601 text."""
    import datetime as dt

    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def _parse_iso(text: str, field: str) -> Any:
    """An ISO-8601 date or timestamp as a datetime (naive when the text has no offset)."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{field} must be an ISO-8601 date or timestamp such as '2013-01-01' or "
                         f"'2013-01-01T05:00:00-05:00'; got {text!r}.") from None


def _utc(value: Any) -> Any:
    """A datetime without an offset taken as UTC (numbers pass through), so bounds compare."""
    import datetime as dt

    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


class _Expectation(_Model):
    name: ExpectationName | None = Field(
        None, description="Name used in the quarantine's `reason` column, in the counts and in error messages; "
                          "None: '<expect>:<column>' (e.g. 'in_range:distance').")

    @property
    def key(self) -> str:
        """The expectation's name: ``name`` or ``<expect>:<column(s)>``."""
        if self.name:
            return self.name
        target = getattr(self, "column", None) or ",".join(getattr(self, "columns", ()))
        return f"{self.expect}:{target}" if target else str(self.expect)  # type: ignore[attr-defined]


class _RowExpectation(_Expectation):
    column: str = Field(min_length=1, description="Column the expectation checks.")
    max_share: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="Fail validate when more than this share of the input rows fails this expectation (each "
                          "row counted for every expectation it fails; malformed lines are not checked). None: only "
                          "validate.max_quarantine_share applies.")


class TypeExpectation(_RowExpectation):
    """The column holds values of ``type``; others are cast, and a value that does not convert is quarantined."""

    expect: Literal["type"] = Field(description="Expectation kind: column type.")
    type: ColumnType = Field(
        description="Spark type of the column in the validated data. A column of another type is cast (Spark's "
                    "try_cast); a row whose non-null value does not convert (e.g. 'N/A' to double, 1.5 to int) is "
                    "quarantined. 'float' is checked as double and written as float.")
    timezone: str = Field(
        "UTC", description="type 'timestamp' only: zone of values that carry none (naive strings, dates, "
                           "timestamp_ntz), an IANA name. Values with an offset or zone keep it. Every timestamp is "
                           "normalised to a UTC instant.")

    @model_validator(mode="after")
    def _zone(self) -> "TypeExpectation":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if self.timezone != "UTC" and self.type != "timestamp":
            raise ValueError(f"timezone applies to type 'timestamp' only; got type {self.type!r}. Remove timezone.")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone must be an IANA time zone such as 'UTC' or 'America/New_York'; "
                             f"got {self.timezone!r}.") from None
        return self


class NotNullExpectation(_RowExpectation):
    """The column has a value in every row; a null row is quarantined."""

    expect: Literal["not_null"] = Field(description="Expectation kind: no nulls.")


class RangeExpectation(_RowExpectation):
    """Values lie within [min, max] (both inclusive); nulls pass (that is not_null's business)."""

    expect: Literal["in_range"] = Field(description="Expectation kind: inclusive range.")
    min: float | int | str | None = Field(
        None, description="Smallest allowed value (inclusive): a number for a numeric column, an ISO-8601 date or "
                          "timestamp for a date/timestamp column (a timestamp without an offset is UTC).")
    max: float | int | str | None = Field(None, description="Largest allowed value (inclusive), like min.")

    @model_validator(mode="before")
    @classmethod
    def _dates_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: _iso_text(v) if k in ("min", "max") else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> "RangeExpectation":
        if self.min is None and self.max is None:
            raise ValueError(f"in_range on {self.column!r} needs min, max or both; got neither.")
        bounds = {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}
        kinds = {k: "text" if isinstance(v, str) else "number" for k, v in bounds.items()}
        if len(set(kinds.values())) > 1:
            raise ValueError(f"in_range on {self.column!r}: min ({self.min!r}) and max ({self.max!r}) must both be "
                             f"numbers or both be ISO-8601 dates/timestamps.")
        parsed = {k: _parse_iso(v, k) if isinstance(v, str) else v for k, v in bounds.items()}
        if len(parsed) == 2:
            lo, hi = (_utc(parsed["min"]), _utc(parsed["max"]))
            if lo > hi:
                raise ValueError(f"in_range on {self.column!r}: min ({self.min!r}) must be <= max ({self.max!r}).")
        return self


class SetExpectation(_RowExpectation):
    """Values are members of ``values``; nulls pass."""

    expect: Literal["in_set"] = Field(description="Expectation kind: allowed values.")
    values: tuple[bool | int | float | str, ...] = Field(
        min_length=1, description="Allowed values: all strings, all numbers or all booleans (quote strings such "
                                  "as 'yes' or 'NA', which YAML would otherwise read as a boolean or keep as text).")

    @model_validator(mode="after")
    def _one_kind(self) -> "SetExpectation":
        kinds = {"boolean" if isinstance(v, bool) else "text" if isinstance(v, str) else "number" for v in self.values}
        if len(kinds) > 1:
            raise ValueError(f"in_set on {self.column!r}: values must be all strings, all numbers or all booleans; "
                             f"got a mix of {sorted(kinds)} in {list(self.values)!r}.")
        return self


class RegexExpectation(_RowExpectation):
    """The value (as text) contains a match of ``pattern``; nulls pass."""

    expect: Literal["regex"] = Field(description="Expectation kind: regular expression.")
    pattern: str = Field(
        min_length=1, description="Java regular expression (Spark's rlike) searched in the value; anchor it "
                                  "('^N[0-9A-Z]{1,5}$') to match the whole value. Non-string columns are matched "
                                  "as text.")

    @model_validator(mode="after")
    def _compiles(self) -> "RegexExpectation":
        import re

        try:
            re.compile(self.pattern)
        except re.error as exc:
            raise ValueError(f"regex on {self.column!r}: pattern {self.pattern!r} does not compile ({exc}).") from None
        return self


class FiniteExpectation(_RowExpectation):
    """A float/double column holds finite values within float32's range.

    Every float/double column gets this check implicitly (not clipping); declare it to clip, to
    name it or to give it a threshold.
    """

    expect: Literal["finite"] = Field(description="Expectation kind: finite, float32-representable numbers.")
    clip: bool = Field(
        False, description="Values beyond float32's range (|x| > 3.4028235e38; models train in float32) are clipped "
                           "to +-3.4028235e38 and counted in the stage output's `clipped`, instead of quarantined. "
                           "NaN and +-infinity are quarantined either way.")


class UniqueExpectation(_Expectation):
    """No two rows share a value of ``columns`` (a column or a column set).

    Checked among the rows every other row-level check kept; every row of a duplicated key is
    quarantined (keeping one of them would depend on row order). Rows with a null in the key pass.
    """

    expect: Literal["unique"] = Field(description="Expectation kind: uniqueness of a column or column set.")
    columns: tuple[str, ...] = Field(
        min_length=1, description="The key: one column or several, e.g. [carrier, flight].")
    max_share: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        None, description="Fail validate when more than this share of the input rows is quarantined as duplicates; "
                          "None: only validate.max_quarantine_share applies.")

    @model_validator(mode="after")
    def _distinct(self) -> "UniqueExpectation":
        dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dup:
            raise ValueError(f"unique: columns {list(self.columns)} name {dup} more than once.")
        return self


class RowCountExpectation(_Expectation):
    """Dataset level: the number of rows lies within [min_rows, max_rows] (inclusive)."""

    expect: Literal["row_count"] = Field(description="Expectation kind: row-count bounds.")
    min_rows: Annotated[int, Field(ge=0)] | None = Field(None, description="Fewest rows allowed (inclusive).")
    max_rows: Annotated[int, Field(ge=0)] | None = Field(None, description="Most rows allowed (inclusive).")
    rows: Literal["input", "kept"] = Field(
        "input", description="Which rows are counted: 'input' (what ingest delivered) or 'kept' (after quarantine).")

    @model_validator(mode="after")
    def _bounds(self) -> "RowCountExpectation":
        if self.min_rows is None and self.max_rows is None:
            raise ValueError("row_count needs min_rows, max_rows or both; got neither.")
        if self.min_rows is not None and self.max_rows is not None and self.min_rows > self.max_rows:
            raise ValueError(f"row_count: min_rows ({self.min_rows}) must be <= max_rows ({self.max_rows}).")
        return self


class FreshnessExpectation(_Expectation):
    """Dataset level: the newest kept value of a timestamp/date column is at most max_age_hours old.

    Age is measured from ``validate.reference_time`` (default: the moment validate runs, UTC).
    """

    expect: Literal["freshness"] = Field(description="Expectation kind: freshness of a timestamp column.")
    column: str = Field(min_length=1, description="A timestamp or date column (declare a `type` expectation to "
                                                  "parse a text column).")
    max_age_hours: Annotated[float, Field(gt=0)] = Field(
        description="Largest allowed age of the newest value, hours before the reference time.")


#: One expectation, chosen by its ``expect`` key.
Expectation = Annotated[
    TypeExpectation | NotNullExpectation | RangeExpectation | SetExpectation | RegexExpectation | FiniteExpectation
    | UniqueExpectation | RowCountExpectation | FreshnessExpectation, Field(discriminator="expect")]

#: Reasons the flights rule set gives (validate.rule_set 'flights'), besides missing_<column>.
FLIGHTS_REASONS = ("month_out_of_range", "day_out_of_range", "sched_dep_time_not_hhmm", "sched_arr_time_not_hhmm",
                   "distance_not_positive", "no_outcome")


class ValidateConfig(_Model):
    """Row-level checks quarantine rows (with a reason); dataset-level checks fail the stage."""

    rule_set: Literal["flights", "none"] = Field(
        "flights", description="Built-in rules checked before `expectations`: 'flights' (month 1-12, a real day of "
                               "the month, hhmm clock times, distance > 0, and no_outcome for flights without "
                               "arr_delay, which have no label) or 'none'.")
    required_columns: tuple[str, ...] = Field(
        ("year", "month", "day", "sched_dep_time", "carrier", "origin", "dest", "distance"),
        description="Columns that must be non-null; a row missing one is quarantined with reason missing_<column>. "
                    "Default: the flights columns with rule_set 'flights', none with rule_set 'none'.",
    )
    expectations: tuple[Expectation, ...] = Field(
        (), description="Declared expectations, each chosen by its `expect` key: row level type, not_null, in_range, "
                        "in_set, regex, finite, unique (failing rows quarantined); dataset level row_count, "
                        "freshness (failing fails the stage).")
    max_quarantine_share: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.10, description="Fail validate when more than this share of the input rows is quarantined (no_outcome "
                          "rows excluded: cancelled/diverted flights have no label, they are not bad data)."
    )
    reference_time: str | None = Field(
        None, description="Instant freshness expectations measure age from: ISO-8601 with an offset, e.g. "
                          "'2014-01-01T00:00:00Z'. None: the moment validate runs (UTC); set it for reproducible runs.")

    @model_validator(mode="before")
    @classmethod
    def _rule_set_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("rule_set") == "none" and "required_columns" not in data:
                data = {**data, "required_columns": ()}
            if "reference_time" in data:
                data = {**data, "reference_time": _iso_text(data["reference_time"])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "ValidateConfig":
        if self.reference_time is not None and self.reference() is None:
            raise ValueError(f"validate.reference_time must carry an offset ('Z' or '+hh:mm'), so it names one "
                             f"instant; got {self.reference_time!r}.")
        reserved = {"malformed_line", *(f"missing_{c}" for c in self.required_columns)}
        if self.rule_set == "flights":
            reserved |= set(FLIGHTS_REASONS)
        seen: set[str] = set()
        for e in self.expectations:
            if e.key in seen or e.key in reserved:
                raise ValueError(f"validate.expectations: the name {e.key!r} is used twice (or is a built-in reason); "
                                 f"give one of them another `name`.")
            seen.add(e.key)
        for kind in ("type", "finite"):
            cols = [e.column for e in self.expectations if e.expect == kind]
            dup = sorted({c for c in cols if cols.count(c) > 1})
            if dup:
                raise ValueError(f"validate.expectations: column(s) {dup} have more than one {kind!r} expectation; "
                                 f"keep one.")
        if sum(e.expect == "row_count" for e in self.expectations) > 1:
            raise ValueError("validate.expectations: more than one row_count expectation; merge them into one.")
        declared = {e.column: e.type for e in self.expectations if isinstance(e, TypeExpectation)}
        for e in self.expectations:
            t = declared.get(getattr(e, "column", ""))
            if isinstance(e, FiniteExpectation) and t is not None and t not in ("float", "double"):
                raise ValueError(f"validate.expectations: finite on {e.column!r} needs a float or double column; its "
                                 f"type expectation says {t!r}.")
            if isinstance(e, FreshnessExpectation) and t is not None and t not in ("date", "timestamp"):
                raise ValueError(f"validate.expectations: freshness on {e.column!r} needs a date or timestamp column; "
                                 f"its type expectation says {t!r}.")
        return self

    def reference(self) -> Any:
        """``reference_time`` as an aware datetime (None when unset or without an offset)."""
        if self.reference_time is None:
            return None
        moment = _parse_iso(self.reference_time, "validate.reference_time")
        return moment if moment.tzinfo is not None else None


class SplitConfig(_Model):
    train_months: tuple[Annotated[int, Field(ge=1, le=12)], ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    validation_months: tuple[Annotated[int, Field(ge=1, le=12)], ...] = (10,)
    test_months: tuple[Annotated[int, Field(ge=1, le=12)], ...] = (11, 12)

    @model_validator(mode="after")
    def _disjoint(self) -> "SplitConfig":
        sets = {"train_months": set(self.train_months), "validation_months": set(self.validation_months),
                "test_months": set(self.test_months)}
        names = list(sets)
        for i, a in enumerate(names):
            if not sets[a]:
                raise ValueError(f"preprocess.split.{a} must name at least one month; got an empty list.")
            for b in names[i + 1:]:
                both = sets[a] & sets[b]
                if both:
                    raise ValueError(f"preprocess.split.{a} and preprocess.split.{b} must not overlap; "
                                     f"both contain {sorted(both)}.")
        return self


class HashSplitConfig(_Model):
    """Split by a hash of each row's content (recipe 'table'): the same row always lands in the same split,
    whatever the partitioning or row order."""

    train: Annotated[float, Field(gt=0, lt=1)] = Field(0.6, description="Share of rows in the train split.")
    validation: Annotated[float, Field(gt=0, lt=1)] = Field(0.2, description="Share of rows in the validation split.")
    test: Annotated[float, Field(gt=0, lt=1)] = Field(0.2, description="Share of rows in the test split.")
    seed: int = Field(0, description="Seed of the row hash (Spark's xxhash64 over the raw columns and the seed).")

    @model_validator(mode="after")
    def _sums_to_one(self) -> "HashSplitConfig":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"preprocess.hash_split: train + validation + test must be 1; got {self.train} + "
                             f"{self.validation} + {self.test} = {total:g}.")
        return self


class PreprocessConfig(_Model):
    recipe: Literal["flights", "table"] = Field(
        "flights", description="How rows become features. 'flights': the bundled job (calendar features, weather "
                               "and plane lookups, split by month, label from arr_delay). 'table': a job defined by "
                               "config alone: features are columns of ingest.main_table as they are, the label is "
                               "label_column in positive_labels, rows are split by hash_split.")
    label_column: str | None = Field(
        None, description="Recipe 'table': the column holding the outcome; never a feature, never a serving input.")
    positive_labels: tuple[bool | int | float | str, ...] = Field(
        (), description="Recipe 'table': values of label_column that mean label 1 (e.g. ['bad']); every other "
                        "non-null value means 0 (rows with a null label are quarantined by validate: declare a "
                        "not_null expectation on label_column).")
    hash_split: HashSplitConfig = HashSplitConfig()
    required_inputs: tuple[str, ...] = Field(
        (), description="Recipe 'table': features a prediction request must carry (non-null); the others are "
                        "optional and imputed (numeric) or take the <missing> slot (categorical) when absent.")
    label_delay_min: Annotated[float, Field(ge=0)] = Field(
        15.0, description="Label is 1 when arr_delay > label_delay_min minutes (FAA's on-time rule uses 15)."
    )
    timezone: str = Field("America/New_York", description="Local time zone of the origin airports (IANA name).")
    split: SplitConfig = SplitConfig()
    numeric_features: tuple[str, ...] = Field(
        ("month", "day_of_week", "sched_dep_minute_of_day", "sched_arr_minute_of_day", "distance",
         "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
         "plane_year", "seats", "engines"),
        description="Numeric features, in order: imputed (median of train), then standardised.",
    )
    categorical_features: tuple[str, ...] = Field(
        ("carrier", "origin", "dest", "route"),
        description="Categorical features: capped vocabulary, then one-hot with two reserved slots (null, and any "
                    "value outside the vocabulary).",
    )
    max_categories: Annotated[int, Field(ge=1, le=10_000)] = Field(
        40, description="Vocabulary cap per categorical feature: the most frequent values in train (ties by code "
                        "point); the rest share the <other> slot with values never seen in train."
    )
    impute_strategy: Literal["median", "mean"] = Field(
        "median", description="Value that replaces a null numeric feature: the exact median (type 7, as numpy's "
                              "default) or the exact mean of its non-null training values.")
    reference_bins: Annotated[int, Field(ge=2, le=1000)] = Field(
        10, description="Drift reference: quantile bins per numeric feature (edges at the exact training quantiles "
                        "i/reference_bins; tied edges merge). Monitoring computes PSI over these bins.")

    @model_validator(mode="before")
    @classmethod
    def _table_features_declared(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("recipe") == "table":
            for key in ("numeric_features", "categorical_features"):
                if key not in data:  # the defaults are the flights features
                    data = {**data, key: ()}
        return data

    @model_validator(mode="after")
    def _no_outcome_features(self) -> "PreprocessConfig":
        from mlops_ray.preprocess.derive import DERIVED_FROM, KNOWN_FEATURES

        features = self.numeric_features + self.categorical_features
        if self.recipe == "table":
            if not self.label_column or not self.positive_labels:
                raise ValueError("preprocess.recipe 'table' needs preprocess.label_column and "
                                 f"preprocess.positive_labels; got {self.label_column!r} and {list(self.positive_labels)}.")
            if not features:
                raise ValueError("preprocess.recipe 'table' needs numeric_features and/or categorical_features: the "
                                 "columns of the main table to learn from; got none.")
            if self.label_column in features:
                raise ValueError(f"preprocess.label_column {self.label_column!r} is also listed as a feature: it "
                                 "would leak the label. Remove it from the features.")
            unknown = sorted(set(self.required_inputs) - set(features))
            if unknown:
                raise ValueError(f"preprocess.required_inputs {unknown} are not features; expected a subset of "
                                 f"{list(features)}.")
        else:
            if self.label_column or self.positive_labels or self.required_inputs:
                raise ValueError("preprocess.label_column, positive_labels and required_inputs are read by recipe "
                                 "'table' only; the flights recipe labels by arr_delay > label_delay_min. Set "
                                 "recipe: table or remove them.")
        dup = set(self.numeric_features) & set(self.categorical_features)
        if dup:
            raise ValueError(f"features {sorted(dup)} are both numeric_features and categorical_features; pick one.")
        if self.recipe == "table":
            return self
        for name in features:
            if name in OUTCOME_COLUMNS:
                raise ValueError(f"preprocess feature '{name}' is an outcome column ({', '.join(OUTCOME_COLUMNS)}): "
                                 "it is only known after the flight and would leak the label. Remove it.")
            if name not in KNOWN_FEATURES:
                raise ValueError(f"preprocess feature '{name}' is unknown; expected one of {sorted(KNOWN_FEATURES)}.")
            leaked = set(DERIVED_FROM.get(name, ())) & set(OUTCOME_COLUMNS)
            if leaked:  # pragma: no cover - guarded by DERIVED_FROM itself
                raise ValueError(f"preprocess feature '{name}' derives from outcome columns {sorted(leaked)}.")
        dup = set(self.numeric_features) & set(self.categorical_features)
        if dup:
            raise ValueError(f"features {sorted(dup)} are both numeric_features and categorical_features; pick one.")
        return self


class Distribution(_Model):
    """One hyperparameter's search space: a fixed value, a choice, or a numeric range."""

    distribution: Literal["uniform", "loguniform", "randint", "choice", "fixed"]
    low: float | None = None
    high: float | None = None
    values: tuple[float | int | str | bool | None, ...] | None = None
    value: float | int | str | bool | None = None

    @model_validator(mode="after")
    def _shape(self) -> "Distribution":
        if self.distribution in ("uniform", "loguniform", "randint"):
            if self.low is None or self.high is None:
                raise ValueError(f"distribution '{self.distribution}' needs low and high; got low={self.low}, high={self.high}.")
            if not self.low < self.high:
                raise ValueError(f"low must be < high; got low={self.low}, high={self.high}.")
            if self.distribution == "loguniform" and self.low <= 0:
                raise ValueError(f"loguniform needs low > 0; got low={self.low}.")
        if self.distribution == "choice" and not self.values:
            raise ValueError("distribution 'choice' needs a non-empty 'values' list.")
        return self


Family = Literal["logistic_regression", "random_forest", "hist_gradient_boosting", "keras_mlp"]

#: Families that report once per step of training (so ASHA can stop them early): gradient boosting
#: every ``tune.iterations_per_report`` boosting iterations, the Keras MLP every epoch.
ITERATIVE_FAMILIES = ("hist_gradient_boosting", "keras_mlp")


#: Validation metrics a search can optimise, and their direction.
METRIC_MODES: dict[str, str] = {"roc_auc": "max", "pr_auc": "max", "f1": "max", "log_loss": "min"}


def _d(distribution: str, **kw: Any) -> "Distribution":
    return Distribution(distribution=distribution, **kw)


def default_search_space() -> dict[str, dict[str, Distribution]]:
    """The bundled search space: all four families (sized so the full flights run fits 20 minutes on 2 cores)."""
    return {
        "logistic_regression": {"C": _d("loguniform", low=1e-3, high=10.0)},
        "random_forest": {"n_estimators": _d("fixed", value=60), "max_depth": _d("randint", low=8, high=14),
                          "min_samples_leaf": _d("randint", low=5, high=50), "max_features": _d("fixed", value="sqrt"),
                          "max_samples": _d("fixed", value=0.3)},
        "hist_gradient_boosting": {"learning_rate": _d("loguniform", low=0.03, high=0.3),
                                   "max_leaf_nodes": _d("randint", low=15, high=63),
                                   "l2_regularization": _d("loguniform", low=1e-4, high=1.0),
                                   "max_iter": _d("fixed", value=200)},
        "keras_mlp": {"hidden_units": _d("choice", values=(32, 64, 128)), "layers": _d("randint", low=1, high=2),
                      "dropout": _d("uniform", low=0.0, high=0.3), "learning_rate": _d("loguniform", low=3e-4, high=3e-3),
                      "batch_size": _d("fixed", value=1024), "epochs": _d("fixed", value=6)},
    }


class TuneConfig(_Model):
    metric: Literal["roc_auc", "pr_auc", "f1", "log_loss"] = Field(
        "roc_auc", description="Validation metric that picks the best trial: roc_auc, pr_auc (average precision), "
                               "f1 (at threshold 0.5) are maximised; log_loss is minimised.")
    search: Literal["optuna", "random"] = Field(
        "optuna", description="Search algorithm: 'optuna' (Optuna's TPE sampler through Ray Tune's OptunaSearch, "
                              "seeded by tune.seed) or 'random' (Tune's BasicVariantGenerator).")
    early_stopping: Literal["asha", "none"] = Field(
        "asha", description="Trial scheduler: 'asha' (Ray Tune's ASHAScheduler over training_iteration; stops poor "
                            "iterative trials early) or 'none' (FIFO: every trial runs to its end).")
    asha_grace_period: Annotated[int, Field(ge=1)] = Field(
        2, description="ASHA: reports every trial makes before it may be stopped (Tune's grace_period).")
    asha_reduction_factor: Annotated[float, Field(gt=1)] = Field(
        3.0, description="ASHA: 1/reduction_factor of the trials go on at each rung (Li et al. 2020, 'A System for "
                         "Massively Parallel Hyperparameter Tuning').")
    iterations_per_report: Annotated[int, Field(ge=1)] = Field(
        25, description="hist_gradient_boosting: boosting iterations between two reports (the Keras MLP reports "
                        "once per epoch).")
    max_failures: Annotated[int, Field(ge=0, le=10)] = Field(
        1, description="Retries of a trial that raised (Ray Tune's FailureConfig.max_failures); a trial whose metric "
                       "is NaN or infinite is failed at once and never chosen.")
    time_limit_per_trial_s: Annotated[float, Field(gt=0)] | None = Field(
        900.0, description="Wall-clock limit of one trial, seconds (None: no limit). The fit runs beside a watchdog "
                           "that stops the trial even when it never reports; the trial is marked failed with the "
                           "reason and is not retried.")
    gpus_per_trial: Annotated[float, Field(ge=0)] = Field(
        0.0, description="GPUs requested per trial (Tune resource request). tensorflow-cpu has no GPU support: GPU "
                         "clusters install tensorflow[and-cuda].")
    num_samples: Annotated[int, Field(ge=1, le=1000)] = Field(
        2, description="Trials per model family (families take turns, so each gets exactly this many).")
    max_concurrent_trials: Annotated[int, Field(ge=1)] = Field(2, description="Trials running at once.")
    cpus_per_trial: Annotated[float, Field(gt=0)] = Field(
        1.0, description="Ray CPUs reserved per trial (fractions allowed); also the trial's thread cap, "
                         "max(1, floor(cpus_per_trial)): scikit-learn n_jobs, BLAS/OpenMP threads through "
                         "threadpoolctl, TensorFlow intra-/inter-op threads.")

    @property
    def threads_per_trial(self) -> int:
        """Threads one trial may run: ``max(1, floor(cpus_per_trial))``."""
        return max(1, int(self.cpus_per_trial))
    reuse_actors: bool = Field(
        True, description="Keep trial workers between trials (Tune's reuse_actors): no process start per trial.")
    seed: int = Field(0, description="Seed of the search and of every model (a rerun at concurrency 1 is identical).")
    class_weight: Literal["balanced"] | None = Field(
        None, description="'balanced': weight classes by n_rows / (2 * class count) (scikit-learn's definition) in "
                          "every family, Keras included; None: unweighted.")
    refit: Literal["train", "train_validation"] = Field(
        "train", description="Model handed to evaluation: 'train' = the best trial's own model (fit on train); "
                             "'train_validation' = the best configuration fit again on train + validation (the "
                             "evaluation threshold is then chosen on rows the model saw).")
    track_trials: bool = Field(
        True, description="Record the experiment in MLflow: one parent run, one nested child run per trial "
                          "(parameters, metrics, status).")
    search_space: dict[Family, dict[str, Distribution]] = Field(
        default_factory=default_search_space,
        description="Per model family, each hyperparameter's distribution (uniform, loguniform, randint with an "
                    "inclusive high, choice, fixed).",
    )

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction of ``metric``."""
        return METRIC_MODES[self.metric]

    @model_validator(mode="after")
    def _families(self) -> "TuneConfig":
        if len(self.search_space) < 1:
            raise ValueError("tune.search_space must name at least one model family.")
        for fam, params in self.search_space.items():
            if "/" in "".join(params):
                raise ValueError(f"tune.search_space.{fam}: hyperparameter names may not contain '/'.")
        return self


class EvaluateConfig(_Model):
    threshold_rule: Literal["max_f1", "target_precision", "fixed"] = Field(
        "max_f1", description="Decision threshold chosen on the validation split: maximise F1, the lowest threshold "
                              "reaching target_precision, or fixed_threshold.")
    target_precision: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="Precision to reach (threshold_rule 'target_precision').")
    fixed_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(0.5, description="Threshold when threshold_rule is 'fixed'.")
    n_bootstrap: Annotated[int, Field(ge=20, le=10_000)] = Field(
        200, description="Bootstrap resamples of the test split for the confidence intervals (percentile method).")
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = Field(0.95, description="Confidence level of the intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resampling.")
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = Field(10, description="Bins of the calibration curve (uniform).")
    slice_columns: tuple[str, ...] = Field(("carrier", "origin"), description="Raw columns whose values define slices.")
    min_slice_size: Annotated[int, Field(ge=1)] = Field(200, description="Slices with fewer test rows are not scored.")
    slice_metric: Literal["roc_auc", "accuracy", "f1", "precision", "recall"] = Field(
        "roc_auc", description="Metric computed per slice.")
    slice_margin: Annotated[float, Field(ge=0)] = Field(
        0.05, description="A slice is flagged when its interval's upper bound is below overall - slice_margin.")


class ExplainConfig(_Model):
    top_k: Annotated[int, Field(ge=1, le=100)] = Field(6, description="Features (by permutation importance) given partial dependence.")
    n_rows: Annotated[int, Field(ge=50)] = Field(4000, description="Test rows sampled for importance and partial dependence.")
    n_repeats: Annotated[int, Field(ge=1, le=50)] = Field(3, description="Permutations per feature (sklearn's n_repeats).")
    grid_resolution: Annotated[int, Field(ge=2, le=100)] = Field(12, description="Grid points per partial-dependence curve.")
    seed: int = Field(0, description="Seed of the row sample and the permutations.")


class RegisterConfig(_Model):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")] = Field("flights", description="Registered model name.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI: None = SQLite in MLOPS_RAY_HOME; a database URI "
                          "(postgresql://user@host:port/db) or a tracking server (http://host:5000).")
    artifact_root: str | None = Field(
        None, description="Where new experiments keep artifacts; None = MLOPS_RAY_HOME/mlartifacts.")
    experiment: str = Field("mlops_ray", description="MLflow experiment name.")
    promotion_margin: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.0, description="A new version becomes champion only if the lower bound of the paired-bootstrap interval of "
                         "(its test ROC AUC - champion's) exceeds this margin.")
    promotion_bootstrap: Annotated[int, Field(ge=20, le=10_000)] = Field(
        200, description="Paired bootstrap resamples of the test split for the promotion gate.")
    allow_library_mismatch: bool = Field(
        False, description="Load a version whose recorded scikit-learn/skops major.minor differs from the installed one.")


class AutoscalingConfig(_Model):
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 2
    target_ongoing_requests: Annotated[float, Field(gt=0)] = 4.0
    upscale_delay_s: Annotated[float, Field(ge=0)] = 5.0
    downscale_delay_s: Annotated[float, Field(ge=0)] = 30.0
    look_back_period_s: Annotated[float, Field(gt=0)] = Field(
        30.0, description="Window over which Serve averages each replica's ongoing requests before a scaling "
                          "decision, seconds (Ray Serve's AutoscalingConfig.look_back_period_s; its default is 30).")

    @model_validator(mode="after")
    def _range(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"deploy.autoscaling.max_replicas must be >= min_replicas ({self.min_replicas}). "
                             f"Got {self.max_replicas} instead.")
        return self

    def to_serve(self) -> dict:
        """Ray Serve's ``autoscaling_config`` dict."""
        return self.model_dump()


class BatchingConfig(_Model):
    """Request batching on a replica (Ray Serve's ``@serve.batch``): the records of concurrent requests are
    scored in one ``predict_proba`` call and split back; answers and log rows are the unbatched ones."""

    enabled: bool = Field(False, description="Batch concurrent predict requests on a replica.")
    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = Field(
        4, description="Most requests scored in one call (Serve's max_batch_size; each request keeps its records).")
    batch_wait_timeout_s: Annotated[float, Field(ge=0, le=10)] = Field(
        0.01, description="How long the first request of a batch waits for others, seconds (Serve's "
                          "batch_wait_timeout_s); it adds up to this much latency at low load.")


#: Ray Serve's default ``max_ongoing_requests`` (ray.serve._private.constants) when deploy.max_ongoing_requests is None.
SERVE_DEFAULT_MAX_ONGOING_REQUESTS = 5


class DeployConfig(_Model):
    host: str = Field("127.0.0.1", description="Serve HTTP proxy host.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="Serve HTTP proxy port.")
    app_name: str = Field("mlops_ray", description="Serve application name.")
    route_prefix: Annotated[str, Field(pattern=r"^/([A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*)?$")] = Field(
        "/", description="HTTP path the application answers under, e.g. '/credit' -> /credit/v1/predict; several "
                         "applications share one Serve proxy (one host and port per Ray cluster) by prefix.")
    prediction_log_url: str | None = Field(
        None, description="Prediction log in PostgreSQL for replicas on several machines, "
                          "'postgresql://USER@HOST:PORT/DATABASE' (no password: see prediction_log_password_env). "
                          "None: SQLite in WAL mode under $MLOPS_RAY_HOME/predictions/ (one machine).")
    prediction_log_password_env: str | None = Field(
        None, description="Environment variable holding the prediction log database password (never the YAML); "
                          "None: libpq's PGPASSWORD or ~/.pgpass.")
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="Where Serve runs HTTP proxies (Ray Serve's proxy_location): EveryNode on a real "
                                 "cluster; HeadOnly when several Ray nodes share one host (they would share the port).")
    model_alias: str = Field("champion", description="Registry alias served.")
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    num_cpus_per_replica: Annotated[float, Field(gt=0)] = Field(0.5, description="Ray CPUs per replica.")
    max_request_bytes: Annotated[int, Field(ge=256)] = Field(1_048_576, description="Largest request body, bytes.")
    max_records: Annotated[int, Field(ge=1)] = Field(1000, description="Most records in one predict request.")
    smoke_records: Annotated[int, Field(ge=0, le=100)] = Field(
        5, description="Real test-split flights sent to the endpoint after deploy (0 = no smoke check)."
    )
    ready_timeout_s: Annotated[float, Field(gt=0)] = Field(180.0, description="How long deploy waits for /readyz.")
    prediction_log_busy_timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(
        10.0, description="How long a prediction log write waits for another replica's write lock (SQLite busy "
                          "timeout), seconds; beyond it the request answers 500.")
    api_key_env: str | None = Field(
        None, description="Environment variable (in the replicas' environment) holding the API key clients send as "
                          "`Authorization: Bearer <key>`; None with api_key_file None = no key. Never the key itself.")
    api_key_file: str | None = Field(
        None, description="File (readable by the replicas) whose content is the API key; alternative to api_key_env.")
    batching: BatchingConfig = BatchingConfig()
    max_ongoing_requests: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Most requests a replica handles at once (Ray Serve's max_ongoing_requests); None = Serve's "
                          "default (5). With batching it bounds the batch, so it must be >= batching.max_batch_size.")
    graceful_shutdown_timeout_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="How long a stopping replica may take to finish its in-flight requests before it is killed, "
                          "seconds (Ray Serve's graceful_shutdown_timeout_s); None = Serve's default (20 s).")
    graceful_shutdown_wait_loop_s: Annotated[float, Field(gt=0)] | None = Field(
        None, description="How often a stopping replica checks for in-flight requests, seconds (Ray Serve's "
                          "graceful_shutdown_wait_loop_s); None = Serve's default (2 s).")
    canary_percent: Annotated[float, Field(ge=0, le=100)] = Field(
        0.0, description="Share of predict requests answered by the `challenger` alias, percent (by a hash of the "
                         "request id); 0 = champion only. Changed on live replicas without restarting them.")
    shadow: bool = Field(
        False, description="Shadow mode: the `challenger` also scores every request, its answer is not returned (its "
                           "scores go to the ray_mlops_shadow_* metrics).")

    @model_validator(mode="after")
    def _serving_options(self) -> "DeployConfig":
        if self.api_key_env and self.api_key_file:
            raise ValueError(f"deploy.api_key_env ('{self.api_key_env}') and deploy.api_key_file "
                             f"('{self.api_key_file}') are both set; set only one.")
        if self.canary_percent > 0 and self.shadow:
            raise ValueError(f"deploy.canary_percent ({self.canary_percent}) and deploy.shadow (true) are both set: the "
                             "challenger either answers a share of requests or shadows them all; set one.")
        limit = self.max_ongoing_requests or SERVE_DEFAULT_MAX_ONGOING_REQUESTS
        if self.batching.enabled and self.batching.max_batch_size > limit:
            raise ValueError(f"deploy.batching.max_batch_size ({self.batching.max_batch_size}) exceeds "
                             f"deploy.max_ongoing_requests ({limit}): a replica never holds that many requests at "
                             f"once. Set max_ongoing_requests >= {self.batching.max_batch_size}.")
        return self

    @model_validator(mode="after")
    def _prediction_log_url(self) -> "DeployConfig":
        from urllib.parse import urlparse

        url = self.prediction_log_url
        if url is not None:
            u = urlparse(url)
            if u.scheme != "postgresql" or not u.hostname or not u.path.strip("/"):
                raise ValueError(f"deploy.prediction_log_url must look like postgresql://USER@HOST:PORT/DATABASE; "
                                 f"got {url!r}.")
            if u.password is not None:
                raise ValueError("deploy.prediction_log_url must not carry a password (it would sit in the YAML "
                                 "and in logs); put it in the environment variable named by "
                                 "deploy.prediction_log_password_env.")
        return self


# --------------------------------------------------------------------------- automation
StageName = Literal["ingest", "validate", "preprocess", "tune", "evaluate", "explain", "register", "deploy", "smoke"]


class RetryConfig(_Model):
    """Per-stage retries with exponential backoff (delay before attempt k+1 = initial * multiplier**(k-1), capped).

    Only failures a retry can fix are retried: config, data and environment errors are
    deterministic and fail at once.
    """

    max_attempts: Annotated[int, Field(ge=1, le=20)] = Field(
        2, description="Attempts per stage including the first (1 = no retry).")
    initial_backoff_s: Annotated[float, Field(ge=0)] = Field(5.0, description="Delay before the second attempt, seconds.")
    backoff_multiplier: Annotated[float, Field(ge=1)] = Field(2.0, description="Each further delay is this times the last.")
    max_backoff_s: Annotated[float, Field(ge=0)] = Field(120.0, description="Upper bound of one delay, seconds.")

    def delay_s(self, failed_attempt: int) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.backoff_multiplier ** (failed_attempt - 1))


class BatchMetricsConfig(_Model):
    """Prometheus metrics of a pipeline run (names in ../shared/CONTRACTS.md), written at the end of every run."""

    textfile_path: str | None = Field(
        None, description="File for node-exporter's textfile collector (must end in .prom); a relative path is "
                          "under MLOPS_RAY_HOME; None = MLOPS_RAY_HOME/metrics/<pipeline name>.prom.")
    pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway, e.g. http://pushgateway:9091; None = no push.")
    pushgateway_job: str = Field("mlops_ray", description="Pushgateway job label (grouped further by pipeline).")
    push_timeout_s: Annotated[float, Field(gt=0)] = Field(10.0, description="Timeout of one push, seconds.")

    @model_validator(mode="after")
    def _prom_suffix(self) -> "BatchMetricsConfig":
        if self.textfile_path is not None and not self.textfile_path.endswith(".prom"):
            raise ValueError("automate.metrics.textfile_path must end in '.prom' (node-exporter's textfile collector "
                             f"reads only those); got '{self.textfile_path}'.")
        if self.pushgateway_url is not None and not self.pushgateway_url.startswith(("http://", "https://")):
            raise ValueError("automate.metrics.pushgateway_url must be an http(s):// URL such as "
                             f"http://pushgateway:9091; got '{self.pushgateway_url}'.")
        return self


class AutomateConfig(_Model):
    """How the runner runs stages: retries and the batch metrics it exports."""

    retry: RetryConfig = RetryConfig()
    stage_retry: dict[StageName, RetryConfig] = Field(
        default_factory=dict, description="Per-stage overrides of `retry`, e.g. {tune: {max_attempts: 3}}.")
    metrics: BatchMetricsConfig = BatchMetricsConfig()

    def retry_for(self, stage: str) -> RetryConfig:
        """The retry policy of ``stage``."""
        return self.stage_retry.get(stage, self.retry)  # type: ignore[call-overload]


class MonitorConfig(_Model):
    """Drift and model-health monitoring: thresholds shared by the detectors, the exported gauges and the alert rules."""

    online: bool = Field(
        True, description="Online drift in Serve: replicas count the answered records in the training reference's "
                          "bins and one monitor actor exports PSI, null shares and rolling metrics.")
    window_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="Length of the online window, seconds: drift and rolling metrics cover the last window_s.")
    push_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        5.0, description="How often each replica pushes its windowed bin counts to the drift monitor actor, seconds.")
    export_interval_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        5.0, description="How often the drift monitor recomputes PSI, null shares and rolling metrics and sets its "
                         "gauges, seconds (0: only on demand).")
    min_window_rows: Annotated[int, Field(ge=1)] = Field(
        30, description="Fewer non-null values of a feature in the window than this: its online PSI is undefined (NaN).")
    psi_bins: Annotated[int, Field(ge=2, le=100)] = Field(
        10, description="PSI bins, cut at the training reference's quantiles.")
    psi_threshold: Annotated[float, Field(gt=0)] = Field(
        0.2, description="A feature drifts when its PSI exceeds this (0.1-0.25 moderate, > 0.25 major; Siddiqi 2006).")
    null_share_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.05, description="A feature drifts when its null share moves by more than this from the reference.")
    min_roc_auc: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.6, description="Alert when the rolling ROC AUC from feedback labels falls below this.")
    max_error_rate: Annotated[float, Field(gt=0, lt=1)] = Field(
        0.01, description="Alert when the share of 5xx answers over 5 minutes exceeds this.")
    max_latency_p99_ms: Annotated[float, Field(gt=0)] = Field(
        500.0, description="Alert when the p99 HTTP latency over 5 minutes exceeds this, milliseconds.")
    alert_for_s: Annotated[int, Field(ge=0)] = Field(
        60, description="How long a condition must hold before its alert fires (Prometheus 'for'), seconds.")
    retrain_on_alerts: tuple[str, ...] = Field(
        ("MlopsFeatureDrift", "MlopsAccuracyDrop"),
        description="Alert names whose firing (Alertmanager webhook) submits the pipeline as a Ray job.")
    retrain_cooldown_s: Annotated[float, Field(ge=0)] = Field(
        3600.0, description="After a retrain submission, further alerts (and `mlops-ray retrain` without --force) "
                            "submit nothing for this long, seconds.")


class Config(_Model):
    """The whole pipeline: engines and one slice per stage."""

    name: str = Field("flights", description="Pipeline name (used in run records and metrics).")
    engines: EnginesConfig = EnginesConfig()
    ingest: IngestConfig = IngestConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    tune: TuneConfig = TuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    explain: ExplainConfig = ExplainConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    deploy: DeployConfig = DeployConfig()
    automate: AutomateConfig = AutomateConfig()
    monitor: MonitorConfig = MonitorConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _recipe_fits_the_job(self) -> "Config":
        p = self.preprocess
        if p.recipe != "table":
            return self
        if self.ingest.source != "tables":
            raise ValueError(f"preprocess.recipe 'table' reads ingest.main_table from ingest.tables: set ingest.source "
                             f"to 'tables'; got {self.ingest.source!r}.")
        if self.validate_.rule_set != "none":
            raise ValueError(f"validate.rule_set {self.validate_.rule_set!r} checks flights columns; preprocess.recipe "
                             "'table' needs rule_set 'none' (declare the table's own validate.expectations).")
        inputs = set(p.numeric_features) | set(p.categorical_features)
        bad = [c for c in self.evaluate.slice_columns if c not in inputs]
        if bad:
            raise ValueError(f"evaluate.slice_columns {bad} are not features of the table (slices are read from the "
                             f"test split's input columns {sorted(inputs)}); name features or set [].")
        return self


def default_config_path() -> Path:
    """Path of the bundled flights config (``mlops_ray/configs/flights.yaml``)."""
    return Path(str(resources.files("mlops_ray") / "configs" / "flights.yaml"))


def bundled_configs() -> dict[str, Path]:
    """The configs shipped in ``mlops_ray/configs/``, by name (``flights``, ``credit``, ``credit_postgres``)."""
    folder = default_config_path().parent
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"Invalid config {source}: {err.error_count()} problem(s)"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate") or "<root>"
        got = e.get("input")
        got_s = repr(got) if not isinstance(got, dict) else "a mapping"
        if len(got_s) > 80:
            got_s = got_s[:77] + "..."
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {loc}: unknown key (got {got_s}); remove it or check its spelling")
        else:
            lines.append(f"  - {loc}: {e['msg']} (got {got_s})")
    return "\n".join(lines)


def config_from_mapping(data: dict, source: str = "<mapping>") -> Config:
    """Validate a mapping (parsed YAML) into a :class:`Config`.

    Raises:
        ConfigError: naming each bad field, what was expected and what came.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"Invalid config {source}: expected a YAML mapping at the top level; got {type(data).__name__}.")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a pipeline YAML file.

    Args:
        path: YAML file; None = the bundled flights config. A bare name that is not a file here
            (``credit``) names a bundled config (:func:`bundled_configs`).

    Returns:
        The frozen :class:`Config`.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    p = Path(path) if path is not None else default_config_path()
    bundled = bundled_configs()
    if not p.is_file() and path is not None and str(path) in bundled:
        p = bundled[str(path)]
    if not p.is_file():
        raise ConfigError(f"Config file {p} does not exist. Pass --config PATH to an existing YAML file, or the name "
                          f"of a bundled config ({', '.join(sorted(bundled))}).")
    try:
        with p.open(encoding="utf-8") as stream:  # a stream, so YAML errors name the file
            data = yaml.safe_load(stream)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"Config file {p} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    return config_from_mapping(data, source=str(p))


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False)
