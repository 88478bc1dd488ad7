"""The Ray Serve application: a FastAPI ingress serving one registered model version.

Routes (../shared/CONTRACTS.md): ``POST /v1/predict``, ``POST /v1/feedback``, ``GET /v1/model``,
``GET /healthz``, ``GET /readyz``. Every answered record is written to the shared prediction log
(:mod:`mlops_ray.serve.prediction_log`) before the answer is sent. Every error has the JSON body
``{"error": {"code", "message", "fields"}}``; a client mistake is never a 5xx. Custom metrics go
through ``ray.serve.metrics`` (Ray adds the ``ray_`` prefix when exporting).
"""

import asyncio
import json
import logging
import tempfile
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlops_ray.preprocess.derive import INPUT_SCHEMA
from mlops_ray.serve.prediction_log import DuplicateRequestId, UnknownRequestId
from mlops_ray.serve.schema import (MAX_REQUEST_ID_CHARS, UNKNOWN_FIELD_LABEL, ApiError, input_schema_description,
                                    parse_json_body, validate_feedback, validate_records)

logger = logging.getLogger(__name__)

app = FastAPI(title="mlops_ray model server", version="1",
              description="Predicts whether a flight arrives more than 15 minutes late.")


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
    msg = {404: f"no route {request.url.path}; see /docs",
           405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return _error_response(ApiError(exc.status_code, code, msg), _request_id(request))


@app.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    rid = _request_id(request)
    logger.exception("internal error on request %s", rid)
    return _error_response(ApiError(500, "internal_error", f"internal error; request id {rid}"), rid)


@serve.deployment(name="ModelServer", logging_config={"enable_access_log": False, "log_level": "WARNING"})
@serve.ingress(app)
class ModelServer:
    """One replica: loads ``model_uri`` from the registry in the background, then answers.

    Args:
        model_uri: ``models:/NAME/VERSION`` (deploy resolves the alias first, so a promotion changes
            the arguments and Serve rolls the replicas over to the new version) or ``models:/NAME@ALIAS``.
        alias: the alias the version is served as (shown in answers).
        register_cfg: the ``register`` slice as a dict (tracking URI, names).
        home_root: absolute ``MLOPS_RAY_HOME``.
        max_request_bytes: body cap (413 beyond it, counted on the bytes read).
        max_records: most records per request.
        prediction_log_busy_timeout_s: how long a prediction log write waits for another replica's lock.
    """

    def __init__(self, model_uri: str, register_cfg: dict, home_root: str, max_request_bytes: int, max_records: int,
                 alias: str | None = None, prediction_log_busy_timeout_s: float = 10.0):
        from ray.serve import metrics

        self.model_uri = model_uri
        self.alias = alias
        self.max_request_bytes = max_request_bytes
        self.max_records = max_records
        self.model = None
        self.prediction_log = None
        self.prediction_log_busy_timeout_s = prediction_log_busy_timeout_s
        self.load_error: str | None = None
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
        threading.Thread(target=self._load, args=(register_cfg, home_root), daemon=True).start()

    def _load(self, register_cfg: dict, home_root: str) -> None:
        from mlops_ray.config import RegisterConfig
        from mlops_ray.home import Home
        from mlops_ray.serve.model import load_served_model
        from mlops_ray.serve.prediction_log import open_prediction_log

        try:
            self.prediction_log = open_prediction_log(Home.resolve(home_root), self.prediction_log_busy_timeout_s)
            self.model = load_served_model(RegisterConfig(**register_cfg), Home.resolve(home_root), self.model_uri,
                                           tempfile.mkdtemp(prefix="mlops_ray_model_"), alias=self.alias)
            logger.info("loaded %s v%s", self.model.name, self.model.version)
        except Exception as e:  # noqa: BLE001 - reported through /readyz
            self.load_error = f"{type(e).__name__}: {e}"
            logger.exception("model load failed")

    def _fail(self, err: ApiError, rid: str, predict_fields: bool = True) -> JSONResponse:
        """Count the error (and, for predict, each invalid input field) and answer it."""
        self._m_errors.inc(tags={"code": err.code})
        if err.code == "validation_error" and predict_fields:
            inputs = self.model.transformer.spec.inputs if self.model is not None else INPUT_SCHEMA
            for f in err.fields:
                loc = f.get("loc") or []
                name = loc[-1] if loc and loc[-1] in inputs else UNKNOWN_FIELD_LABEL
                self._m_val.inc(tags={"field": str(name)})
        return _error_response(err, rid)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(self, request: Request):
        if self.model is None or self.prediction_log is None:
            why = self.load_error or "model is loading"
            return _error_response(ApiError(503, "unavailable", f"not ready: {why}"), _request_id(request))
        return {"status": "ready", "model": {"name": self.model.name, "version": self.model.version}}

    @app.get("/v1/model")
    async def model_info(self, request: Request):
        if self.model is None:
            return self._fail(ApiError(503, "unavailable", "no model loaded yet"), _request_id(request))
        m = self.model
        return {"name": m.name, "version": m.version, "alias": m.alias, "uri": self.model_uri,
                "input_schema": input_schema_description(m.transformer.spec),
                "threshold": m.threshold, "family": m.info.get("family"),
                "metrics": m.info.get("metrics"), "trained_at": m.info.get("trained_at"),
                "data_fingerprint": m.info.get("data_fingerprint")}

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

    async def _json_body(self, request: Request) -> Any:
        """Content type (415), bytes read under the cap (413), strict UTF-8 JSON (400)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "unsupported_media_type",
                           f"content type '{ctype or 'none'}' not supported; send application/json")
        return parse_json_body(await self._read_body(request))

    def _internal_error(self, rid: str) -> JSONResponse:
        logger.exception("internal error on request %s", rid)
        return self._fail(ApiError(500, "internal_error", f"internal error; request id {rid}"), rid)

    @app.post("/v1/predict")
    async def predict(self, request: Request):
        rid = _request_id(request)
        t0 = time.perf_counter()
        try:
            payload = await self._json_body(request)
            m, log = self.model, self.prediction_log
            if m is None or log is None:
                raise ApiError(503, "unavailable", "no model loaded yet; retry when /readyz answers 200")
            records = validate_records(payload, self.max_records, m.transformer.spec)
            preds = m.predictions(records)
            try:  # written before the answer: feedback must find it, whichever replica it reaches
                await asyncio.to_thread(log.log_predictions, rid, m.name, m.version, payload["records"], preds)
            except DuplicateRequestId:
                raise ApiError(409, "conflict", f"request id {rid!r} was already used for a prediction; send a "
                                                "fresh X-Request-ID (or none: the server makes one)") from None
        except ApiError as err:
            return self._fail(err, rid)
        except Exception:  # noqa: BLE001 - a bug: JSON 500 with the request id, never a traceback
            return self._internal_error(rid)
        for p in preds:
            self._m_pred.inc(tags={"model_version": m.version, "label": str(p["label"])})
            self._m_score.observe(p["probability"])
        self._m_latency.observe((time.perf_counter() - t0) * 1000.0)
        body: dict[str, Any] = {"request_id": rid, "model": {"name": m.name, "version": m.version, "alias": m.alias},
                                "predictions": preds}
        return _AsciiJSONResponse(body)

    @app.post("/v1/feedback", status_code=202)
    async def feedback(self, request: Request):
        """True labels for a logged prediction: ``{"request_id", "label"[, "record_index"]}`` or
        ``{"request_id", "labels": [...]}`` -> 202; unknown request id -> 404."""
        rid = _request_id(request)
        try:
            fb = validate_feedback(await self._json_body(request))
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


def model_server(deploy_cfg, register_cfg, home, uri: str, alias: str | None):
    """The bound Serve application for ``uri`` with the deploy slice's autoscaling and limits."""
    return ModelServer.options(autoscaling_config=deploy_cfg.autoscaling.to_serve(),
                               ray_actor_options={"num_cpus": deploy_cfg.num_cpus_per_replica}).bind(
        uri, register_cfg.model_dump(mode="json"), str(home.root), deploy_cfg.max_request_bytes,
        deploy_cfg.max_records, alias, deploy_cfg.prediction_log_busy_timeout_s)
