"""The Ray Serve application: a FastAPI ingress serving the registry's champion (and challenger).

Routes (../shared/CONTRACTS.md): ``POST /v1/predict``, ``POST /v1/feedback``, ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``. Every answered record is written to the shared prediction log
(:mod:`mlops_ray.serve.prediction_log`) before the answer is sent. Every error has the JSON body
``{"error": {"code", "message", "fields"}}``; a client mistake is never a 5xx. Custom metrics go
through ``ray.serve.metrics`` (Ray adds the ``ray_`` prefix when exporting).

Serving features (``deploy`` slice of the config):

* API key: ``Authorization: Bearer <key>``, the key read by the replica from ``deploy.api_key_env`` or
  ``deploy.api_key_file``; 401 ``unauthorized`` without it or with a wrong one (compared in constant time);
  ``/healthz`` and ``/readyz`` stay open.
* Batching (``deploy.batching``): Ray Serve's ``@serve.batch`` gathers concurrent requests; their records are
  scored in one ``predict_proba`` call per model and split back, so answers and log rows equal the unbatched ones.
* Rollout through ``user_config``: the deployment carries ``{"model_uri", "alias", "challenger_uri",
  "canary_percent", "shadow"}`` (:func:`rollout_user_config`); Serve calls :meth:`ModelServer.reconfigure` on
  the live replicas when it changes (a promotion or rollback), which loads the new version beside the old one
  and swaps only on success. A version that fails to load leaves the old one serving, reported by
  ``GET /v1/model`` (``last_reload_error``) and ``ray_mlops_model_reload_failures_total``.
* Canary and shadow: a share of requests (by a hash of the request id) answered by the challenger, or the
  challenger scoring every request in the background (``ray_mlops_shadow_*`` metrics) while the champion answers.
* Graceful shutdown: Serve stops routing to a stopping replica, waits for its in-flight requests
  (``graceful_shutdown_wait_loop_s``, at most ``graceful_shutdown_timeout_s``), then calls ``__del__``, which
  turns ``/readyz`` and ``/v1/predict`` to 503, waits for any request still running and closes the log.
"""

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.serve.model import ServedModel
from mlops_ray.serve.prediction_log import DuplicateRequestId, UnknownRequestId
from mlops_ray.serve.schema import (FEEDBACK_BODY, MAX_REQUEST_ID_CHARS, PREDICT_BODY, UNKNOWN_FIELD_LABEL, ApiError,
                                    check_request_id_header, input_schema_description, parse_json_body,
                                    validate_feedback, validate_records)

logger = logging.getLogger(__name__)

app = FastAPI(title="mlops_ray model server", version="1",
              description="Predicts whether a flight arrives more than 15 minutes late.",
              redirect_slashes=False)  # /v1/predict/ is a JSON 404 naming /v1/predict, not a 307 (a body may not follow)


class _AsciiJSONResponse(JSONResponse):
    """JSON rendered as ASCII: a lone surrogate echoed from a client's field name cannot break encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type", 401: "unauthorized", 400: "bad_json", 409: "conflict",
                 503: "unavailable"}


def _request_id(request: Request) -> str:
    """The request id: Serve's proxy puts the client's X-Request-ID (or a generated one) in the
    request headers and echoes it on the response, so the body and the header agree."""
    rid = request.headers.get("x-request-id", "")
    return rid[:MAX_REQUEST_ID_CHARS] if rid else uuid.uuid4().hex


def _error_response(err: ApiError, request_id: str) -> JSONResponse:
    return _AsciiJSONResponse(err.body(), status_code=err.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _STATUS_CODES.get(exc.status_code, "error")
    path = request.url.path
    hint = f"did you mean {path.rstrip('/')}? " if path.endswith("/") and len(path) > 1 else ""
    msg = {404: f"no route {path}; {hint}see /docs",
           405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return _error_response(ApiError(exc.status_code, code, msg), _request_id(request))


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    rid = _request_id(request)
    logger.exception("internal error on request %s", rid)
    return _error_response(ApiError(500, "internal_error", f"internal error; request id {rid}"), rid)


#: Paths answered without an API key (probes), relative to the application's route prefix.
OPEN_PATHS = ("/healthz", "/readyz")

class _ApiKeyMiddleware:
    """Pure ASGI middleware (the request body still streams to the routes): 401 without the right key."""

    def __init__(self, asgi_app):
        self.app = asgi_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in OPEN_PATHS:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:  # the replica this request reached (Serve's public replica context)
            replica = serve.get_replica_context().servable_object
        except Exception:  # noqa: BLE001 - outside a replica
            replica = None
        if not hasattr(replica, "_auth_failure"):  # fail closed: never serve without the replica's key check
            err = ApiError(503, "unavailable", "replica not initialised; retry when /readyz answers 200")
            return await _error_response(err, _request_id(request))(scope, receive, send)
        resp = replica._auth_failure(request)
        if resp is not None:
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


app.add_middleware(_ApiKeyMiddleware)


def rollout_user_config(model_uri: str, alias: str | None, challenger_uri: str | None = None,
                        canary_percent: float = 0.0, shadow: bool = False) -> dict[str, Any]:
    """The deployment's ``user_config``: what its replicas serve. Changing it reconfigures live replicas.

    Args:
        model_uri: the champion, pinned (``models:/NAME/VERSION``).
        alias: the alias answers name it by (``champion``).
        challenger_uri: the challenger, pinned, or None.
        canary_percent: share of requests the challenger answers, percent (0-100).
        shadow: the challenger scores every request without answering.
    """
    return {"model_uri": model_uri, "alias": alias, "challenger_uri": challenger_uri,
            "canary_percent": float(canary_percent), "shadow": bool(shadow)}


def _unit_hash(request_id: str) -> float:
    """A request id mapped uniformly to [0, 1) (SHA-256): the canary split, reproducible per request id."""
    return int.from_bytes(hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).digest()[:8], "big") / 2.0 ** 64


@dataclasses.dataclass(frozen=True)
class _Rollout:
    """What a replica serves, swapped as one object: a request reads it once and keeps it to the end."""

    champion: ServedModel
    champion_uri: str
    challenger: ServedModel | None = None
    challenger_uri: str | None = None
    canary_fraction: float = 0.0
    shadow: bool = False

    def pick(self, request_id: str) -> ServedModel:
        """The model that answers this request: the challenger for ``canary_fraction`` of request ids."""
        if self.challenger is not None and self.canary_fraction > 0 and _unit_hash(request_id) < self.canary_fraction:
            return self.challenger
        return self.champion


def _version_of(uri: str | None) -> str:
    """``"3"`` of ``models:/flights/3``; the URI itself otherwise (bounded: registry versions and aliases)."""
    if not uri:
        return "none"
    tail = uri.rsplit("/", 1)[-1]
    return tail if tail.isdigit() else tail.rsplit("@", 1)[-1]


@serve.deployment(name="ModelServer", logging_config={"enable_access_log": False, "log_level": "WARNING"})
@serve.ingress(app)
class ModelServer:
    """One replica: answers from the model version(s) its ``user_config`` names (see :meth:`reconfigure`).

    Args:
        model_uri: used when the deployment has no ``user_config`` (``serve run`` of a config file, tests):
            ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, loaded in the background at start.
        register_cfg: the ``register`` slice as a dict (tracking URI, names).
        home_root: absolute ``MLOPS_RAY_HOME``.
        max_request_bytes: body cap (413 beyond it, counted on the bytes read).
        max_records: most records per request.
        alias: the alias the version is served as (shown in answers).
        prediction_log_busy_timeout_s: how long a prediction log write waits for another replica's lock.
        options: ``{"api_key_env", "api_key_file", "batching": {enabled, max_batch_size, batch_wait_timeout_s},
            "rollout": bool (a user_config will name the models), "drain_timeout_s", "prediction_log_url",
            "prediction_log_password_env", "monitor": the monitor slice as a dict (online drift on) or None}``.
    """

    def __init__(self, model_uri: str, register_cfg: dict, home_root: str, max_request_bytes: int, max_records: int,
                 alias: str | None = None, prediction_log_busy_timeout_s: float = 10.0,
                 options: dict[str, Any] | None = None):
        from ray.serve import metrics

        from mlops_ray.config import BatchingConfig, RegisterConfig
        from mlops_ray.home import Home

        opts = options or {}
        self._default_uri = model_uri
        self.alias = alias
        self.register_cfg = RegisterConfig(**register_cfg)
        self.home = Home.resolve(home_root)
        self.max_request_bytes = max_request_bytes
        self.max_records = max_records
        self.prediction_log = None
        self.prediction_log_busy_timeout_s = prediction_log_busy_timeout_s
        self.load_error: str | None = None
        self.last_reload_error: dict[str, Any] | None = None
        self.reload_failures = 0
        self._rollout: _Rollout | None = None
        self._target: dict[str, Any] | None = None
        self._target_seq = 0
        self._reconfigure_lock = asyncio.Lock()
        self._stopping = False
        self._inflight = 0
        self._background: set[asyncio.Task] = set()
        self._drain_timeout_s = float(opts.get("drain_timeout_s", 20.0))
        self.batching = BatchingConfig(**(opts.get("batching") or {}))
        self._batch_stats = {"batches": 0, "largest_batch_requests": 0, "batched_requests": 0}
        self._shadow_stats = {"records_scored": 0, "label_disagreements": 0, "errors": 0}
        try:
            from ray.serve import get_replica_context

            self.replica_id = get_replica_context().replica_id.unique_id
        except Exception:  # noqa: BLE001 - outside a replica (direct construction)
            self.replica_id = None
        self._m_pred = metrics.Counter("mlops_predictions_total", description="Predictions answered.",
                                       tag_keys=("model_version", "label"))
        self._m_score = metrics.Histogram("mlops_prediction_score", description="Predicted probability of delay.",
                                          boundaries=[i / 10 for i in range(1, 10)])
        self._m_latency = metrics.Histogram("mlops_inference_latency_ms",
                                            description="Time to validate, transform and score one request, ms.",
                                            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000])
        self._m_errors = metrics.Counter("mlops_request_errors_total", description="Error answers by code.",
                                         tag_keys=("code",))
        self._m_val = metrics.Counter("mlops_validation_errors_total",
                                      description="Invalid fields in predict requests (field in the input schema or _unknown).",
                                      tag_keys=("field",))
        self._m_reload = metrics.Counter("mlops_model_reload_failures_total",
                                         description="Model versions a replica failed to load on reconfigure "
                                                     "(the previous version kept serving).",
                                         tag_keys=("model_version",))
        self._m_shadow = metrics.Counter("mlops_shadow_predictions_total",
                                         description="Records the shadow model (challenger) scored without answering.",
                                         tag_keys=("model_version", "label"))
        self._m_shadow_disagree = metrics.Counter("mlops_shadow_disagreements_total",
                                                  description="Shadow-scored records whose label differs from the "
                                                              "answered one.", tag_keys=("model_version",))
        self._m_batch = metrics.Histogram("mlops_batch_requests", description="Requests scored in one batched call.",
                                          boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        if self.batching.enabled:
            self._score_batched.set_max_batch_size(self.batching.max_batch_size)
            self._score_batched.set_batch_wait_timeout_s(self.batching.batch_wait_timeout_s)
        self._api_key: str | None = None
        self._auth_error: str | None = None
        if opts.get("api_key_env") or opts.get("api_key_file"):
            self._read_api_key(opts.get("api_key_env"), opts.get("api_key_file"))
        self._log_url = opts.get("prediction_log_url")
        self._log_password_env = opts.get("prediction_log_password_env")
        if not opts.get("rollout"):  # no user_config will come: load the init argument's model in the background
            threading.Thread(target=self._load_default, daemon=True).start()
        else:
            self._open_log()
        self._monitor_cfg = opts.get("monitor")
        self._monitor_app = opts.get("monitor_actor") or "mlops_ray"
        self._recorder = None  # the OnlineDriftRecorder of the champion being served (see _observe)
        self._recorder_lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    def _read_api_key(self, env: str | None, file: str | None) -> None:
        from mlops_ray.ingest.secrets import secret_value

        try:
            key = secret_value("deploy.api_key", env, file)
        except Exception as e:  # noqa: BLE001 - fail closed: every protected route answers 503 with the reason
            self._auth_error = str(e)
            logger.error("API key not readable: %s", e)
            return
        if not key:
            self._auth_error = "deploy.api_key is configured but empty; put the key in the variable or file"
        self._api_key = key or None

    def _open_log(self) -> None:
        from mlops_ray.serve.prediction_log import open_prediction_log

        try:
            self.prediction_log = open_prediction_log(self.home, self.prediction_log_busy_timeout_s,
                                                      url=self._log_url, password_env=self._log_password_env)
        except Exception as e:  # noqa: BLE001 - reported through /readyz
            self.load_error = f"{type(e).__name__}: {e}"
            logger.exception("prediction log open failed")

    def _load_model(self, uri: str, alias: str | None) -> ServedModel:
        from mlops_ray.serve.model import load_served_model

        dest = tempfile.mkdtemp(prefix="mlops_ray_model_")
        return load_served_model(self.register_cfg, self.home, uri, dest, alias=alias)

    def _load_default(self) -> None:
        self._open_log()
        if self.prediction_log is None:
            return
        try:
            m = self._load_model(self._default_uri, self.alias)
            self._rollout = _Rollout(champion=m, champion_uri=self._default_uri)
            logger.info("loaded %s v%s", m.name, m.version)
        except Exception as e:  # noqa: BLE001 - reported through /readyz
            self.load_error = f"{type(e).__name__}: {e}"
            logger.exception("model load failed")

    async def reconfigure(self, user_config: dict) -> None:
        """Serve's hook for a new ``user_config`` (:func:`rollout_user_config`), at start and on every change.

        Loads what changed into new objects beside the ones serving (requests keep being answered meanwhile),
        then swaps them in as one object. Never raises: on a failure the old models keep serving, the error goes
        to ``last_reload_error`` (``GET /v1/model``) and ``ray_mlops_model_reload_failures_total``; a replica with
        nothing loaded yet reports it through ``/readyz`` (503).
        """
        async with self._reconfigure_lock:
            self._target = dict(user_config or {})
            self._target_seq += 1
            cur = self._rollout
            uri = None
            try:
                uri = str(user_config["model_uri"])
                alias = user_config.get("alias")
                ch_uri = user_config.get("challenger_uri") or None
                canary = float(user_config.get("canary_percent") or 0.0)
                if not 0.0 <= canary <= 100.0:
                    raise ValueError(f"canary_percent must be between 0 and 100; got {canary}")
                loaded = {}
                if cur is not None:
                    loaded[cur.champion_uri] = cur.champion
                    if cur.challenger is not None:
                        loaded[cur.challenger_uri] = cur.challenger
                champion = loaded.get(uri)
                if champion is None:
                    champion = await asyncio.to_thread(self._load_model, uri, alias)
                if champion.alias != alias:
                    champion = dataclasses.replace(champion, alias=alias)
                challenger = None
                if ch_uri is not None:
                    uri = ch_uri
                    challenger = loaded.get(ch_uri)
                    if challenger is None:
                        challenger = await asyncio.to_thread(self._load_model, ch_uri, "challenger")
                    if challenger.alias != "challenger":
                        challenger = dataclasses.replace(challenger, alias="challenger")
            except Exception as e:  # noqa: BLE001 - never raise: the old version keeps serving
                self.reload_failures += 1
                self.last_reload_error = {"uri": uri, "version": _version_of(uri), "error": f"{type(e).__name__}: {e}",
                                          "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                          "target_seq": self._target_seq}
                self._m_reload.inc(tags={"model_version": _version_of(uri)})
                logger.exception("reconfigure: loading %s failed; still serving %s", uri,
                                 cur.champion_uri if cur is not None else "nothing")
                if cur is None:
                    self.load_error = self.last_reload_error["error"]
                return
            self._rollout = _Rollout(champion=champion, champion_uri=str(user_config["model_uri"]),
                                     challenger=challenger, challenger_uri=ch_uri, canary_fraction=canary / 100.0,
                                     shadow=bool(user_config.get("shadow")) and challenger is not None)
            self.load_error = None
            logger.info("serving %s v%s%s", champion.name, champion.version,
                        f" with challenger v{challenger.version}" if challenger is not None else "")

    def _observe(self, champion: ServedModel, records: list[dict], scores: list[float],
                 columns: dict[str, Any] | None = None) -> None:
        """Add answered records to the online drift window (:mod:`mlops_ray.monitor.online`).

        The window counts in the bins of the champion's training reference; a new champion gets a new
        recorder (the monitor drops windows on other bins). ``columns``: the records' derived features as
        the champion's transformer made them while scoring (:meth:`ServedModel.score`); None (another
        model scored) derives them here with the champion's transformer. Never raises: drift is best
        effort and never affects answers.
        """
        from mlops_ray.config import MonitorConfig
        from mlops_ray.monitor.online import DriftReference, OnlineDriftRecorder, monitor_actor_name

        try:
            with self._recorder_lock:  # requests observed in parallel threads must share one recorder
                rec = self._recorder
                if rec is None or rec.version != champion.version:
                    if rec is not None:
                        rec.stop()
                    mc = MonitorConfig(**self._monitor_cfg)
                    rec = OnlineDriftRecorder(DriftReference.from_model_dir(champion.path), mc.window_s,
                                              replica_id=f"{self.replica_id or id(self)}-v{champion.version}",
                                              monitor_name=monitor_actor_name(self._monitor_app))
                    rec.version = champion.version
                    self._recorder = rec.start(mc.push_interval_s)
            if columns is None:
                columns = champion.transformer.derived_columns(records)
            rec.observe(columns, np.asarray(scores, dtype=float))
        except Exception:  # noqa: BLE001 - best effort: logged, never raised into a request
            logger.exception("online drift: observing %d records failed", len(records))

    @property
    def model(self) -> ServedModel | None:
        """The champion being served (None before a load succeeded)."""
        ro = self._rollout
        return ro.champion if ro is not None else None

    @property
    def model_uri(self) -> str:
        ro = self._rollout
        return ro.champion_uri if ro is not None else self._default_uri

    async def __del__(self):
        """Serve's shutdown hook, called once the replica's in-flight requests drained (or the graceful shutdown
        timeout passed): from here ``/readyz`` and ``/v1/predict`` answer 503; a request still running (one that
        reached the replica late) is waited for, then the prediction log is closed."""
        self._stopping = True
        deadline = time.monotonic() + self._drain_timeout_s
        while (self._inflight > 0 or self._background) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.prediction_log is not None:
            try:
                self.prediction_log.close()
            except Exception:  # noqa: BLE001
                logger.exception("closing the prediction log failed")

    # ------------------------------------------------------------------ errors and auth
    def _fail(self, err: ApiError, rid: str, predict_fields: bool = True) -> JSONResponse:
        """Count the error (and, for predict, each invalid input field) and answer it."""
        self._m_errors.inc(tags={"code": err.code})
        if err.code == "validation_error" and predict_fields:
            inputs = self.model.transformer.spec.inputs if self.model is not None else INPUT_SCHEMA
            for f in err.fields:
                loc = f.get("loc") or []
                name = loc[-1] if loc and loc[-1] in inputs else UNKNOWN_FIELD_LABEL
                self._m_val.inc(tags={"field": str(name)})
        resp = _error_response(err, rid)
        if err.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="mlops_ray"'
        return resp

    def _auth_failure(self, request: Request) -> JSONResponse | None:
        """None when the request may pass (no key configured, or the right key); else the 401/503 answer."""
        if self._auth_error is not None:
            return self._fail(ApiError(503, "unavailable", f"API key not available: {self._auth_error}"),
                              _request_id(request))
        if self._api_key is None:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return self._fail(ApiError(401, "unauthorized", "missing API key: send the header "
                                                            "'Authorization: Bearer <key>'"), _request_id(request))
        given = hashlib.sha256(token.encode("latin-1", "replace")).digest()  # the header's raw bytes (ASGI: latin-1)
        if not hmac.compare_digest(given, hashlib.sha256(self._api_key.encode("utf-8")).digest()):
            return self._fail(ApiError(401, "unauthorized", "invalid API key"), _request_id(request))
        return None

    # ------------------------------------------------------------------ routes
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self, request: Request):
        ro = self._rollout
        if self._stopping:
            return _error_response(ApiError(503, "unavailable", "not ready: replica is shutting down"),
                                   _request_id(request))
        if self._auth_error is not None:
            return _error_response(ApiError(503, "unavailable", f"not ready: API key not available: "
                                                                f"{self._auth_error}"), _request_id(request))
        if ro is None or self.prediction_log is None:
            why = self.load_error or "model is loading"
            return _error_response(ApiError(503, "unavailable", f"not ready: {why}"), _request_id(request))
        out: dict[str, Any] = {"status": "ready", "model": {"name": ro.champion.name, "version": ro.champion.version}}
        err = self.last_reload_error
        if err is not None and err["target_seq"] == self._target_seq:  # the current target failed to load
            out["reload_failed_version"] = err["version"]  # only the version: the details are behind the API key
        return out

    @app.get("/v1/model")
    async def model_info(self, request: Request):
        ro = self._rollout
        if ro is None:
            return self._fail(ApiError(503, "unavailable", "no model loaded yet"), _request_id(request))
        m = ro.champion
        ch = ro.challenger
        return {"name": m.name, "version": m.version, "alias": m.alias, "uri": ro.champion_uri,
                "input_schema": input_schema_description(m.transformer.spec),
                "threshold": m.threshold, "family": m.info.get("family"),
                "metrics": m.info.get("metrics"), "trained_at": m.info.get("trained_at"),
                "data_fingerprint": m.info.get("data_fingerprint"),
                "challenger": None if ch is None else {"name": ch.name, "version": ch.version, "uri": ro.challenger_uri},
                "canary_percent": ro.canary_fraction * 100.0 if ch is not None else 0.0,
                "shadow": {"enabled": ro.shadow, **self._shadow_stats},
                "batching": {**self.batching.model_dump(), **self._batch_stats},
                "target": self._target, "last_reload_error": self.last_reload_error,
                "reload_failures": self.reload_failures, "replica_id": self.replica_id}

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise ApiError(413, "payload_too_large", f"body of {declared} bytes; at most {self.max_request_bytes} allowed")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > self.max_request_bytes:
                raise ApiError(413, "payload_too_large", f"body exceeds {self.max_request_bytes} bytes")
        return bytes(buf)

    async def _json_body(self, request: Request, expected: str = PREDICT_BODY) -> Any:
        """Content type (415), bytes read under the cap (413), strict UTF-8 JSON (400; ``expected`` names the
        route's body shape when it is empty)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type",
                           f"content type '{ctype}' not supported; send application/json" if ctype else
                           "no Content-Type header; send the body as application/json")
        return parse_json_body(await self._read_body(request), expected)

    def _internal_error(self, rid: str) -> JSONResponse:
        logger.exception("internal error on request %s", rid)
        return self._fail(ApiError(500, "internal_error", f"internal error; request id {rid}"), rid)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _score_batched(self, items: list[tuple[ServedModel, list[dict]]]) -> list[Any]:
        """Several requests' (model, records): one ``predict_proba`` call per model over all their records, split
        back in request order, each as (predictions, derived columns) (:meth:`_score`). A request whose records
        fail is scored alone, so only it gets the error."""
        out: list[Any] = [None] * len(items)
        groups: dict[int, tuple[ServedModel, list[int]]] = {}
        for i, (m, _) in enumerate(items):
            groups.setdefault(id(m), (m, []))[1].append(i)
        for m, idx in groups.values():
            try:
                proba, columns = m.score([r for i in idx for r in items[i][1]])
            except Exception:  # noqa: BLE001 - find the request at fault: score each alone
                for i in idx:
                    try:
                        p, cols = m.score(items[i][1])
                        out[i] = (m.predictions_from(p), cols)
                    except Exception as e:  # noqa: BLE001 - handed to that request's caller
                        out[i] = e
                continue
            self._m_batch.observe(len(idx))
            self._batch_stats["batches"] += 1
            self._batch_stats["batched_requests"] += len(idx)
            self._batch_stats["largest_batch_requests"] = max(self._batch_stats["largest_batch_requests"], len(idx))
            pos = 0
            for i in idx:
                n = len(items[i][1])
                out[i] = (m.predictions_from(proba[pos:pos + n]),
                          {k: v[pos:pos + n] if isinstance(v, np.ndarray) else v.iloc[pos:pos + n]
                           for k, v in columns.items()})
                pos += n
        return out

    async def _score(self, m: ServedModel, records: list[dict]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The API's prediction objects for ``records`` scored by ``m`` (batched with other requests when
        batching is on), and the records' derived features (column -> (n,) values, :meth:`ServedModel.score`)."""
        if not self.batching.enabled:
            proba, columns = m.score(records)
            return m.predictions_from(proba), columns
        res = await self._score_batched((m, records))
        if isinstance(res, BaseException):
            raise res
        return res

    async def _shadow_score(self, challenger: ServedModel, records: list[dict], answered: list[dict]) -> None:
        """The challenger scores what the champion answered; counted, never returned."""
        try:
            preds = await asyncio.to_thread(challenger.predictions, records)
        except Exception:  # noqa: BLE001 - the shadow never affects answers
            self._shadow_stats["errors"] += 1
            logger.exception("shadow scoring by v%s failed", challenger.version)
            return
        for p, a in zip(preds, answered):
            self._m_shadow.inc(tags={"model_version": challenger.version, "label": str(p["label"])})
            if p["label"] != a["label"]:
                self._m_shadow_disagree.inc(tags={"model_version": challenger.version})
                self._shadow_stats["label_disagreements"] += 1
        self._shadow_stats["records_scored"] += len(preds)

    @app.post("/v1/predict")
    async def predict(self, request: Request):
        rid = _request_id(request)
        t0 = time.perf_counter()
        self._inflight += 1
        try:
            check_request_id_header(request.headers.get("x-request-id"))
            payload = await self._json_body(request)
            ro, log = self._rollout, self.prediction_log
            if self._stopping:
                raise ApiError(503, "unavailable", "replica is shutting down; retry")
            if ro is None or log is None:
                raise ApiError(503, "unavailable", "no model loaded yet; retry when /readyz answers 200")
            m = ro.pick(rid)
            records = validate_records(payload, self.max_records, m.transformer.spec)
            preds, columns = await self._score(m, records)
            try:  # written before the answer: feedback must find it, whichever replica it reaches
                await asyncio.to_thread(log.log_predictions, rid, m.name, m.version, payload["records"], preds)
            except DuplicateRequestId:
                raise ApiError(409, "conflict", f"request id {rid!r} was already used for a prediction; send a "
                                                "fresh X-Request-ID (or none: the server makes one)") from None
        except ApiError as err:
            return self._fail(err, rid)
        except Exception:  # noqa: BLE001 - a bug: JSON 500 with the request id, never a traceback
            return self._internal_error(rid)
        finally:
            self._inflight -= 1
        for p in preds:
            self._m_pred.inc(tags={"model_version": m.version, "label": str(p["label"])})
            self._m_score.observe(p["probability"])
        self._m_latency.observe((time.perf_counter() - t0) * 1000.0)
        if ro.shadow and m is ro.champion and ro.challenger is not None:
            task = asyncio.get_running_loop().create_task(self._shadow_score(ro.challenger, records, preds))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        if self._monitor_cfg is not None:  # online drift: counted off the answer's path, in the champion's bins
            task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._observe, ro.champion, records, [p["probability"] for p in preds],
                                  columns if m is ro.champion else None))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        body: dict[str, Any] = {"request_id": rid, "model": {"name": m.name, "version": m.version, "alias": m.alias},
                                "predictions": preds}
        return _AsciiJSONResponse(body)

    @app.post("/v1/feedback", status_code=202)
    async def feedback(self, request: Request):
        """True labels for a logged prediction: ``{"request_id", "label"[, "record_index"]}`` or
        ``{"request_id", "labels": [...]}`` -> 202; unknown request id -> 404."""
        rid = _request_id(request)
        try:
            fb = validate_feedback(await self._json_body(request, FEEDBACK_BODY))
            log = self.prediction_log
            if log is None:
                raise ApiError(503, "unavailable", "prediction log not open yet; retry when /readyz answers 200")
            n = await asyncio.to_thread(log.record_count, fb.request_id)
            if n == 0:
                raise ApiError(404, "not_found", f"no prediction with request id {fb.request_id!r}; send the "
                                                 "request_id of a /v1/predict answer")
            labels = fb.labels_by_index(n)
            stored = await asyncio.to_thread(log.add_feedback, fb.request_id, labels)
        except ApiError as err:
            return self._fail(err, rid, predict_fields=False)
        except UnknownRequestId:
            return self._fail(ApiError(404, "not_found", "no prediction with that request id"), rid)
        except Exception:  # noqa: BLE001
            return self._internal_error(rid)
        return _AsciiJSONResponse({"request_id": fb.request_id, "labels_stored": stored}, status_code=202)


def build_app(args: dict[str, Any]):
    """Serve application builder for config files (``serve run cluster/serve_config.yaml``).

    Args (all optional): ``config`` (pipeline YAML path; default the bundled one),
    ``model_uri`` (default ``models:/<name>@<deploy.model_alias>``), ``home`` (default
    ``MLOPS_RAY_HOME``). Autoscaling and limits come from the pipeline config's ``deploy`` slice.
    """
    from mlops_ray.config import load_config
    from mlops_ray.home import Home

    from mlops_ray.registry.uri import parse_model_uri

    cfg = load_config(args.get("config"))
    home = Home.resolve(args.get("home"))
    uri = args.get("model_uri") or f"models:/{cfg.register_.model_name}@{cfg.deploy.model_alias}"
    return model_server(cfg.deploy, cfg.register_, home, uri, parse_model_uri(uri)[1])


def _code_version(init_args: tuple) -> str:
    """Serve's code version of the deployment: the constructor arguments and this package's serving code.

    Serve replaces replicas when it changes and only calls ``reconfigure`` when just the ``user_config`` did.
    ``serve.run`` otherwise draws a random version on every call (``ray.serve._private.client``), which would
    replace the replicas on every promotion.
    """
    h = hashlib.sha256(json.dumps(init_args, sort_keys=True, default=str).encode())
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def model_server(deploy_cfg, register_cfg, home, uri: str, alias: str | None, rollout: dict[str, Any] | None = None,
                 monitor_cfg=None):
    """The bound Serve application with the deploy slice's autoscaling, limits and serving options.

    Args:
        uri: the model URI; with ``rollout`` the unpinned alias URI (``models:/flights@champion``), which stays
            the same across promotions.
        rollout: the ``user_config`` (:func:`rollout_user_config`) naming the pinned versions to serve; None = the
            replicas load ``uri`` themselves (a config file served with ``serve run``).
        monitor_cfg: the ``monitor`` slice: replicas count the answered records for online drift and push them
            to the drift monitor actor (:func:`mlops_ray.monitor.online.start_drift_monitor`); None = off.
    """
    options = {"api_key_env": deploy_cfg.api_key_env, "api_key_file": deploy_cfg.api_key_file,
               "batching": deploy_cfg.batching.model_dump(mode="json"), "rollout": rollout is not None,
               "drain_timeout_s": deploy_cfg.graceful_shutdown_timeout_s or 20.0,
               "prediction_log_url": deploy_cfg.prediction_log_url,
               "prediction_log_password_env": deploy_cfg.prediction_log_password_env,
               "monitor": None if monitor_cfg is None else monitor_cfg.model_dump(mode="json"),
               "monitor_actor": deploy_cfg.app_name}
    args = (uri, register_cfg.model_dump(mode="json"), str(home.root), deploy_cfg.max_request_bytes,
            deploy_cfg.max_records, alias, deploy_cfg.prediction_log_busy_timeout_s, options)
    serve_opts: dict[str, Any] = {"autoscaling_config": deploy_cfg.autoscaling.to_serve(),
                                  "ray_actor_options": {"num_cpus": deploy_cfg.num_cpus_per_replica}}
    for k in ("max_ongoing_requests", "graceful_shutdown_timeout_s", "graceful_shutdown_wait_loop_s"):
        if getattr(deploy_cfg, k) is not None:  # None: Serve's default (and nothing added to generated configs)
            serve_opts[k] = getattr(deploy_cfg, k)
    if rollout is not None:
        serve_opts.update(user_config=rollout, version=_code_version(args), _internal=True)
    return ModelServer.options(**serve_opts).bind(*args)
