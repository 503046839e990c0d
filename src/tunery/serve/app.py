"""The HTTP service: ``create_app`` builds a FastAPI app serving run directories to API keys.

Request path of a prediction: key (401/403) -> body and limits (400/413/422) -> idempotent replay?
-> rate limit and quota (429) -> dynamic batch -> usage committed (see metering.py) -> 200.

An explanation takes the same path with its own caps (413/422, see explaining.py), its own rate
limit and quota (the plan's ``explain``), the explanation executor instead of the batch (503 when
its queue is full, 504 past ``explain.timeout_seconds``) and its own usage unit, explanations.
"""

import asyncio
import concurrent.futures
import functools
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Body, Depends, FastAPI, Header, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.explain.methods import METHODS as EXPLAIN_METHODS
from tunery.serve import docs, explaining
from tunery.serve import keys as keyring
from tunery.serve import metering
from tunery.serve.auth import KeyCache, RateLimiter, bearer_token
from tunery.serve.batching import Batcher
from tunery.serve.keys import KeyInfo
from tunery.serve.metrics import OTHER, Metrics
from tunery.serve.settings import ServeConfig, load_serve_config
from tunery.store import Store

log = logging.getLogger(__name__)

ENV_SPEC = "TUNERY_SERVE_SPEC"
_IDEMPOTENCY_RE = re.compile(r"[\x21-\x7e]{1,255}")


# ----------------------------------------------------------------------------------------------
# Errors: every failure is {"error": {"code", "message"}} with a 4xx/5xx status
# ----------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.extra = status, code, message, headers, extra


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


def _validation_message(errors: list[dict]) -> tuple[int, str, str]:
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = first.get("ctx", {}).get("error", "")
        return 400, "invalid_json", f"the request body is not valid JSON{': ' + str(detail) if detail else ''}"
    shown = "; ".join(f"{_where(tuple(e.get('loc', ())))}: {e.get('msg')}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "invalid_request", shown + more


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(list(exc.errors()))
        return _error(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), message, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal_error", f"the server failed: {type(exc).__name__}; nothing was billed")


# ----------------------------------------------------------------------------------------------
# Request and response bodies (these shape the OpenAPI schema at /docs)
# ----------------------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., min_length=1, description="texts to classify (limits: see GET /v1/models)")
    pairs: list[str] | None = Field(None, description="second texts, one per text, for pair models")


class Prediction(BaseModel):
    label: str | None = None
    labels: list[str] | None = None
    value: float | None = None
    score: float | None = None
    probabilities: dict[str, float] | None = None


class Usage(BaseModel):
    texts: int
    tokens: int


class PredictResponse(BaseModel):
    model: str
    model_ref: str
    request_id: str
    predictions: list[Prediction]
    usage: Usage


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(..., min_length=1, description="texts to explain (limits: 'explain' in GET /v1/models)")
    pairs: list[str] | None = Field(None, description="second texts, one per text, for pair models")
    method: Literal[EXPLAIN_METHODS] = Field(  # type: ignore[valid-type]
        ..., description="ig: Integrated Gradients (needs gradients: not on ONNX runs); shap: Kernel SHAP; "
        "lime: LIME; occlusion: leave-one-word-out (one model evaluation per word)")
    target: StrictInt | StrictStr | None = Field(
        None, description="the label (name or index) to explain; default the predicted one (the top label for "
        "multi-label); a regression model explains its value")
    options: dict[str, StrictInt | StrictFloat] | None = Field(
        None, description="the method's options: ig {steps, internal_batch_size}, shap {samples, batch}, lime "
        "{samples, batch, kernel_width}, occlusion {batch}; steps, samples and batches are capped by the server")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="LIME and SHAP: the same seed gives the same explanation")
    faithfulness: bool = Field(
        False, description="also measure comprehensiveness, sufficiency and the correlation with leave-one-out, "
        "each beside random's (more model evaluations)")


class WordAttribution(BaseModel):
    text: str
    start: int = Field(description="character offsets [start, end) in the text (segment 0) or the pair (1)")
    end: int
    segment: int
    score: float | None = Field(description="the word's attribution to the explained score")


class Faithfulness(BaseModel):
    comprehensiveness: float | None = None
    sufficiency: float | None = None
    loo_spearman: float | None = None
    random_comprehensiveness: float | None = None
    random_sufficiency: float | None = None
    random_loo_spearman: float | None = None
    evaluations: int
    seconds: float


class ExplanationOut(BaseModel):
    text: str
    pair: str | None = None
    method: str
    target: str | None = Field(None, description="the label explained; null for regression (its value)")
    prediction: Prediction
    score: float | None = Field(None, description="the explained number: the target's probability, or the value")
    words: list[WordAttribution]
    params: dict[str, float] = Field(description="the method's parameters as run (defaults filled in)")
    evaluations: int = Field(description="model evaluations this explanation cost (IG's with gradients)")
    seconds: float
    delta: float | None = Field(None, description="IG: sum of word scores - (score - baseline_score)")
    baseline_score: float | None = None
    truncated: bool = Field(description="words past the run's max_length were cut off and are not explained")
    faithfulness: Faithfulness | None = None


class ExplainUsage(BaseModel):
    explanations: int = Field(description="the billed unit: one per text explained")
    evaluations: int = Field(description="model evaluations, faithfulness measurements included")


class ExplainResponse(BaseModel):
    model: str
    model_ref: str
    request_id: str
    method: str
    explanations: list[ExplanationOut]
    usage: ExplainUsage


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    plan: str | None = None
    models: list[str] | None = None
    admin: bool = False
    note: str | None = None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 422, 429, 503)}
_EXPLAIN_ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 422, 429, 503, 504)}


# ----------------------------------------------------------------------------------------------
# The served models
# ----------------------------------------------------------------------------------------------


@dataclass
class ServedModel:
    name: str
    path: Path
    ref: str  # name@version for registry models, else the run directory
    predictor: Any = None
    batcher: Batcher | None = None
    executor: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tunery-infer")
    )

    def info(self, config: ServeConfig) -> dict[str, Any]:
        meta = self.predictor.meta if self.predictor is not None else {}
        limits, caps = config.limits, config.explain
        return {
            "name": self.name, "model_ref": self.ref, "task": meta.get("task"),
            "labels": meta.get("label_names"), "text_pairs": bool(meta.get("text_pair_column")),
            "max_length": meta.get("max_length"), "ready": self.predictor is not None,
            "max_texts_per_request": limits.max_texts_per_request, "max_chars_per_text": limits.max_chars_per_text,
            "explain": {
                "methods": explaining.methods_for(self.predictor) if self.predictor is not None else None,
                "max_texts_per_request": caps.max_texts_per_request, "max_words_per_text": caps.max_words_per_text,
                "max_steps": caps.max_steps, "max_samples": caps.max_samples, "max_batch": caps.max_batch,
                "timeout_seconds": caps.timeout_seconds,
            },
        }  # fmt: skip


@dataclass
class _State:
    config: ServeConfig
    store: Store
    models: dict[str, ServedModel]
    metrics: Metrics
    limiter: RateLimiter
    meter: metering.Meter
    keys: KeyCache
    explainer: explaining.Explainer
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None


def _load_models(state: _State) -> None:
    from tunery.predict import load

    try:
        for served in state.models.values():
            served.predictor = load(served.path, batch_size=state.config.batching.inference_batch_size,
                                    precision=state.config.precision, threads=state.config.threads)
            served.predictor.score(["warm up"], ["warm up"] if served.predictor.meta.get("text_pair_column") else None)
        state.ready.set()
        log.info("models ready: %s", ", ".join(state.models))
    except Exception as e:  # reported by /readyz; the process stays up so the cause can be read
        state.load_error = f"{type(e).__name__}: {e}"
        log.exception("loading models failed")


# ----------------------------------------------------------------------------------------------
# An ASGI layer under FastAPI: header limits (431), body size (413) and time (408), request metrics
# ----------------------------------------------------------------------------------------------


class _Edge:
    """Checks what the HTTP layer (tunery.serve.protocol) leaves to the app: the number and total
    size of headers (the size is also bounded by the protocol, before any of it is kept), the body's
    size and the time it takes to arrive; and counts every request in the metrics, labelled with
    served model names only (``OTHER`` for any other name)."""

    def __init__(self, app, *, limits, body_timeout: float, models: frozenset[str], metrics: Metrics) -> None:
        self.app, self.limits, self.max_body, self.metrics = app, limits, limits.max_body_bytes, metrics
        self.body_timeout, self.models = body_timeout, models

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = scope.get("headers") or []
            if len(headers) > self.limits.max_headers:
                await self._reject(send_wrapper, 431, "too_many_headers", (
                    f"the request has {len(headers)} header fields; the limit is limits.max_headers="
                    f"{self.limits.max_headers}"))
                return
            size = sum(len(k) + len(v) + 4 for k, v in headers)
            if size > self.limits.max_header_bytes:
                await self._reject(send_wrapper, 431, "header_too_large", (
                    f"the request headers are {size} bytes; the limit is limits.max_header_bytes="
                    f"{self.limits.max_header_bytes}"))
                return
            declared = dict(headers).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
                await self._too_large(send_wrapper)
                return
            body, more = bytearray(), True
            try:
                async with asyncio.timeout(self.body_timeout):
                    while more:
                        message = await receive()
                        if message["type"] == "http.disconnect":
                            return
                        body += message.get("body", b"")
                        more = message.get("more_body", False)
                        if len(body) > self.max_body:
                            await self._too_large(send_wrapper)
                            return
            except TimeoutError:
                await self._reject(send_wrapper, 408, "body_timeout", (
                    f"the request body did not arrive within connections.body_timeout_seconds="
                    f"{self.body_timeout:g} ({len(body)} bytes came); send the body at once"))
                return
            if body:
                try:
                    bytes(body).decode("utf-8")
                except UnicodeDecodeError as e:
                    await self._reject(send_wrapper, 400, "invalid_encoding", (
                        f"the request body is not valid UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start}); "
                        "send JSON encoded as UTF-8"))
                    return
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            name = (scope.get("path_params") or {}).get("name") if route is not None else None
            model = name if name in self.models else OTHER
            if endpoint not in ("/metrics",):
                labels = (model, endpoint, str(status["code"]))
                self.metrics.requests.labels(*labels).inc()
                self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)

    async def _too_large(self, send) -> None:
        await self._reject(send, 413, "body_too_large", (
            f"the request body is larger than max_body_bytes={self.max_body} bytes; "
            "send fewer or shorter texts per request"))

    @staticmethod
    async def _reject(send, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def create_app(
    models: dict[str, str | Path] | dict[str, tuple[str | Path, str]],
    *,
    config: ServeConfig | None = None,
    store: Store | None = None,
    workers: int = 1,
    load_in_background: bool | None = None,
) -> FastAPI:
    """An app serving ``models`` (served name -> run directory, or -> (run directory, model ref)).

    One process (the default with ``workers=1``): models load in the background after startup, so
    /healthz answers at once and /readyz turns 200 once they have loaded. Several workers share one
    port, so a worker that answered while still loading would turn away requests that a ready
    worker could serve: there each worker loads before it starts accepting connections.
    """
    if load_in_background is None:
        load_in_background = workers == 1
    config = config or load_serve_config()
    store = store or Store()
    served = {}
    for name, target in models.items():
        path, ref = target if isinstance(target, tuple) else (target, str(target))
        served[name] = ServedModel(name=name, path=Path(path), ref=str(ref))
    metrics = Metrics()
    state = _State(config=config, store=store, models=served, metrics=metrics,
                   limiter=RateLimiter(share=workers),
                   meter=metering.Meter(store, idempotency_retention=timedelta(
                       hours=config.idempotency_retention_hours)),
                   keys=KeyCache(config.auth_cache_seconds),
                   explainer=explaining.Explainer(config.explain.workers, config.explain.max_queued_requests,
                                                  config.explain.nice))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        state.meter.start()
        for m in served.values():
            m.batcher = Batcher(
                _score_fn(m), max_batch_size=config.batching.max_batch_size,
                max_wait_ms=config.batching.max_wait_ms, executor=m.executor,
                on_batch=_batch_observer(metrics, m.name),
            )  # fmt: skip
            await m.batcher.start()
        if load_in_background:
            threading.Thread(target=_load_models, args=(state,), name="tunery-load", daemon=True).start()
        else:
            await run_in_threadpool(_load_models, state)
        try:
            yield
        finally:
            # uvicorn has drained in-flight requests by now; commit what they submitted, then stop
            for m in served.values():
                if m.batcher is not None:
                    await m.batcher.stop()
            await run_in_threadpool(state.explainer.shutdown)
            await run_in_threadpool(state.meter.stop)
            for m in served.values():
                m.executor.shutdown(wait=True)

    app = docs.offline_app(
        title="tunery", version="1", lifespan=lifespan,
        description="Predictions from fine-tuned tunery models, metered per API key. "
        "Send `Authorization: Bearer <key>` (in /docs: Authorize); errors are "
        "`{\"error\": {\"code\", \"message\"}}`. Served models: " + ", ".join(f"`{n}`" for n in sorted(served)) + ".",
    )  # fmt: skip
    app.state.tunery = state
    _install_error_handlers(app)
    _routes(app, state)
    app.add_middleware(_Edge, limits=config.limits, body_timeout=config.connections.body_timeout_seconds,
                       models=frozenset(served), metrics=metrics)
    return app


def _score_fn(m: ServedModel):
    def score(texts: list[str], pairs: list[str] | None):
        return m.predictor.score(texts, pairs)

    return score


def _batch_observer(metrics: Metrics, name: str):
    def observe(n: int, seconds: float) -> None:
        metrics.batch_size.labels(name).observe(n)
        metrics.batch_seconds.labels(name).observe(seconds)

    return observe


def _request_hash(model: str, body: PredictRequest) -> str:
    blob = json.dumps({"model": model, "texts": body.texts, "pairs": body.pairs}, ensure_ascii=False,
                      separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


async def _replayed(store, key, idempotency_key: str | None, request_hash: str | None):
    """The stored response of an earlier request with this Idempotency-Key (None: a new request);
    a malformed key is refused."""
    if idempotency_key is None:
        return None
    if not _IDEMPOTENCY_RE.fullmatch(idempotency_key):
        raise ApiError(422, "bad_header", "Idempotency-Key must be 1-255 printable ASCII characters")
    stored = await run_in_threadpool(metering.find_idempotent, store, key.key_id, idempotency_key)
    return None if stored is None else _replay(stored, request_hash, idempotency_key)


def _plan_of(key, config):
    plan = config.plans.get(key.plan)
    if plan is None:
        raise ApiError(403, "unknown_plan", f"this key's plan {key.plan!r} is not configured on this server; "
                       "ask the operator to add it to the serve config")
    return plan


def _explain_hash(model: str, body: ExplainRequest) -> str:
    blob = json.dumps({"endpoint": "explain", "model": model, **body.model_dump()}, ensure_ascii=False,
                      separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _routes(app: FastAPI, state: _State) -> None:
    config, store, metrics = state.config, state.store, state.metrics

    async def caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(docs.bearer)]) -> KeyInfo:
        return await authenticate(credentials.credentials if credentials is not None else None)

    async def authenticate(token: str | None) -> KeyInfo:
        if token is None:
            raise ApiError(401, "missing_key", "send your API key as 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": "Bearer"})
        now = time.monotonic()
        key = state.keys.get(token, now)
        if key is None:
            generation = state.keys.generation()  # before the read: a revocation after it wins (see KeyCache)
            key = await run_in_threadpool(keyring.authenticate, store, token)
            if key is not None:
                state.keys.put(token, key, now, generation)
        if key is None:
            raise ApiError(401, "invalid_key", "the API key is unknown or revoked",
                           headers={"WWW-Authenticate": "Bearer"})
        return key

    async def admin(key: Annotated[KeyInfo, Depends(caller)]) -> KeyInfo:
        if not key.admin:
            raise ApiError(403, "admin_required", "this endpoint needs an admin key (tunery keys create --admin)")
        return key

    def model_for(name: str, key: KeyInfo) -> ServedModel:
        m = state.models.get(name)
        if m is None:
            yours = [n for n in sorted(state.models) if key.allows(n)]
            raise ApiError(404, "unknown_model", f"model {name!r} is not served here; this key may use: "
                           f"{', '.join(yours) or 'none of the served models'} (GET /v1/models lists them)")
        if not key.allows(name):
            raise ApiError(403, "model_not_allowed", f"this key may not use model {name!r}; it may use: "
                           f"{', '.join(key.models or [])}")
        return m

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], responses={503: {"model": ErrorResponse}})
    async def readyz():
        if state.ready.is_set():
            return {"status": "ready", "models": sorted(state.models)}
        if state.load_error:
            return _error(503, "load_failed", f"models failed to load: {state.load_error}")
        return _error(503, "loading", "models are loading", {"Retry-After": "1"})

    @app.get("/metrics", tags=["ops"], response_class=Response, responses={401: {"model": ErrorResponse}},
             openapi_extra={"security": [{}]})  # the key is optional here: [{bearer: []}, {}]
    async def prometheus(
        request: Request, _key: Annotated[HTTPAuthorizationCredentials | None, Security(docs.bearer)],
    ) -> Response:
        """Prometheus text format. Without a key (or with a tenant key): request, latency, batch and
        queue series, which name no tenant. With an admin key: also usage per tenant and model."""
        tenants = False
        authorization = request.headers.get("authorization")
        if authorization is not None:  # a key that is sent must be valid: 401 else
            tenants = (await authenticate(bearer_token(authorization))).admin
        for m in state.models.values():
            if m.batcher is not None:
                metrics.queue_depth.labels(m.name).set(m.batcher.queued_texts)
        metrics.explain_in_flight.set(state.explainer.in_flight)
        return Response(metrics.render(tenants=tenants), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", tags=["predict"], responses=_ERRORS)
    async def list_models(key: Annotated[KeyInfo, Depends(caller)]) -> dict:
        return {"models": [m.info(config) for m in state.models.values() if key.allows(m.name)]}

    @app.post("/v1/models/{name}/predict", tags=["predict"], response_model=PredictResponse,
              response_model_exclude_none=True, responses=_ERRORS)
    async def predict(
        name: Annotated[str, PathParam(description="a served model (GET /v1/models lists those your key may use)",
                                       json_schema_extra={"enum": sorted(state.models)} if state.models else None)],
        body: Annotated[PredictRequest, Body(openapi_examples=docs.predict_examples(
            {n: docs.takes_pairs(m.path) for n, m in state.models.items()}))],
        key: Annotated[KeyInfo, Depends(caller)],
        idempotency_key: Annotated[str | None, Header(description="retry-safe: same key, same response, billed once")] = None,
    ):
        started = time.perf_counter()
        m = model_for(name, key)
        _check_limits(body, m, config)
        if not state.ready.is_set():
            raise ApiError(503, "loading", "models are loading; retry shortly", headers={"Retry-After": "1"})
        request_hash = _request_hash(name, body) if idempotency_key is not None else None
        replayed = await _replayed(store, key, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
        plan = _plan_of(key, config)
        # The rate limit is looked at first (a limited client costs no store read), but its token is
        # spent only once the quota admits the request: a request refused for its quota costs no rate.
        rate = {"rate": plan.rate_limit, "size": plan.bucket_size}
        _rate_limited(key, plan.rate_limit, plan.bucket_size, state.limiter.check(
            key.key_id, time.monotonic(), spend=False, **rate))
        now = datetime.now(timezone.utc)
        if plan.monthly_quota is not None:
            used = await run_in_threadpool(metering.quota_used, store, key.tenant, plan, now)
            need = metering.quota_amount(plan, texts=len(body.texts), tokens=0)
            if used + need > plan.monthly_quota:
                raise _over_quota(key, plan, metering.seconds_to_next_period(now))

        if m.batcher.queued_texts + len(body.texts) > config.batching.max_queue_texts:
            raise ApiError(503, "overloaded", f"model {name!r} has {m.batcher.queued_texts} texts waiting "
                           f"(batching.max_queue_texts={config.batching.max_queue_texts}); retry shortly",
                           headers={"Retry-After": "1"})
        _rate_limited(key, plan.rate_limit, plan.bucket_size, state.limiter.check(key.key_id, time.monotonic(), **rate))
        scores, tokens = await m.batcher.submit(body.texts, body.pairs)
        request_id = uuid.uuid4().hex
        out = {
            "model": name, "model_ref": m.ref, "request_id": request_id,
            "predictions": m.predictor.task.decode(scores, m.predictor.label_names, threshold=m.predictor.threshold),
            "usage": {"texts": len(body.texts), "tokens": int(tokens.sum())},
        }  # fmt: skip
        event = metering.UsageEvent(
            tenant=key.tenant, key_id=key.key_id, model=name, model_ref=m.ref, texts=len(body.texts),
            tokens=int(tokens.sum()), latency_ms=(time.perf_counter() - started) * 1000, request_id=request_id,
            at=now, plan=plan, idempotency_key=idempotency_key, request_hash=request_hash,
            response=out if idempotency_key is not None else None,
        )  # fmt: skip
        try:
            outcome = await asyncio.wrap_future(state.meter.submit(event))
        except Exception as e:  # the store is unreachable: answer nothing we could not bill
            log.error("usage not recorded for request %s: %s", request_id, e)
            raise ApiError(503, "metering_unavailable", "the usage store is unavailable, so the prediction was "
                           "not billed and is not returned; retry shortly", headers={"Retry-After": "1"}) from None
        if outcome.status == "over_quota":
            state.limiter.refund(key.key_id, **rate)
            raise _over_quota(key, plan, outcome.retry_after or 1)
        if outcome.status in ("replay", "conflict"):
            stored = (request_hash if outcome.status == "replay" else "", outcome.response or {})
            return _replay(stored, request_hash, idempotency_key)
        metrics.usage_requests.labels(key.tenant, name).inc()
        metrics.usage_texts.labels(key.tenant, name).inc(event.texts)
        metrics.usage_tokens.labels(key.tenant, name).inc(event.tokens)
        return JSONResponse(out, headers={"X-Request-ID": request_id})

    @app.post("/v1/models/{name}/explain", tags=["explain"], response_model=ExplainResponse, responses=_EXPLAIN_ERRORS)
    async def explain(
        name: Annotated[str, PathParam(description="a served model (GET /v1/models lists those your key may use)",
                                       json_schema_extra={"enum": sorted(state.models)} if state.models else None)],
        body: Annotated[ExplainRequest, Body(openapi_examples=docs.explain_examples(
            {n: docs.run_kind(m.path) for n, m in state.models.items()}))],
        key: Annotated[KeyInfo, Depends(caller)],
        idempotency_key: Annotated[str | None, Header(description="retry-safe: same key, same response, billed once")] = None,
    ):
        """Which words drove each prediction: per text, each word's score (with its character offsets),
        the prediction, the method's parameters, IG's convergence delta, optionally faithfulness, and
        the cost in model evaluations. Billed per text explained ("explanations"), apart from
        predictions, under the plan's own explanation rate limit and quota."""
        from tunery.errors import ExplainError, TuneryError, UnsupportedMethodError
        from tunery.explain.core import check_method
        from tunery.explain.target import choose_target

        started = time.perf_counter()
        caps = config.explain
        m = model_for(name, key)
        _check_limits(body, m, config, max_texts=caps.max_texts_per_request,
                      max_texts_name="explain.max_texts_per_request")
        _check_explain_strings(body)
        if not state.ready.is_set():
            raise ApiError(503, "loading", "models are loading; retry shortly", headers={"Retry-After": "1"})
        predictor = m.predictor
        try:
            check_method(predictor, body.method)
        except UnsupportedMethodError as e:
            raise ApiError(422, "method_not_supported", str(e), methods=explaining.methods_for(predictor)) from None
        try:
            options = explaining.check_options(body.method, body.options or {}, caps)
        except explaining.CapError as e:
            raise ApiError(e.status, e.code, e.message) from None
        except ExplainError as e:
            raise ApiError(422, "invalid_option", str(e)) from None
        try:
            choose_target(predictor, _zeros(len(predictor.meta.get("label_names") or [])), body.target)
        except ExplainError as e:
            raise ApiError(422, "invalid_target", str(e)) from None

        request_hash = _explain_hash(name, body) if idempotency_key is not None else None
        replayed = await _replayed(store, key, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
        plan = _plan_of(key, config)
        bucket = f"{key.key_id}:explain"  # its own token bucket: explanations do not spend prediction rate
        rate = {"rate": plan.explain.rate_limit, "size": plan.explain.bucket_size}
        limited = functools.partial(_rate_limited, key, plan.explain.rate_limit, plan.explain.bucket_size,
                                    what="the explanation ")
        limited(state.limiter.check(bucket, time.monotonic(), spend=False, **rate))
        now = datetime.now(timezone.utc)
        if plan.explain.monthly_quota is not None:
            used = await run_in_threadpool(metering.explanations_used, store, key.tenant, now)
            if used + len(body.texts) > plan.explain.monthly_quota:
                raise _over_explain_quota(key, plan, metering.seconds_to_next_period(now))
        try:
            await run_in_threadpool(explaining.count_words, predictor, body.texts, body.pairs, caps)
        except explaining.CapError as e:
            raise ApiError(e.status, e.code, e.message) from None
        if not state.explainer.admit():
            raise ApiError(503, "overloaded", f"{state.explainer.waiting} explain requests are waiting for a free "
                           f"explainer (explain.max_queued_requests={caps.max_queued_requests}); retry shortly",
                           headers={"Retry-After": "1"})
        try:
            limited(state.limiter.check(bucket, time.monotonic(), **rate))
        except ApiError:
            state.explainer.release_unused()
            raise
        budget = explaining.Budget(caps.timeout_seconds)
        job = explaining.Job(predictor, body.texts, body.pairs, body.method, body.target, options, body.seed,
                             body.faithfulness, budget)
        future = state.explainer.submit(job)
        try:
            results = await asyncio.wait_for(asyncio.wrap_future(future), timeout=caps.timeout_seconds)
        except (TimeoutError, explaining.ExplainTimeout):
            budget.stop()
            waited = (budget.started or time.monotonic()) - budget.admitted
            ran = time.monotonic() - budget.started if budget.started is not None else 0.0
            raise ApiError(504, "explain_timeout", (
                f"the explanation did not finish within explain.timeout_seconds={caps.timeout_seconds:g} "
                f"({waited:.1f} s waiting for a free explainer, {ran:.1f} s explaining) and was stopped; nothing "
                "was billed. Explain fewer or shorter texts, ask for fewer steps or samples, or use a cheaper "
                "method (occlusion costs one model evaluation per word)")) from None
        except UnsupportedMethodError as e:
            raise ApiError(422, "method_not_supported", str(e), methods=explaining.methods_for(predictor)) from None
        except ExplainError as e:
            raise ApiError(422, "invalid_request", str(e)) from None
        except TuneryError as e:
            raise ApiError(422, "invalid_request", str(e)) from None
        finally:
            if not future.done():
                budget.stop()  # given up (timed out or cancelled): stop at its next model call

        evaluations = sum(r["evaluations"] + ((r.get("faithfulness") or {}).get("evaluations") or 0) for r in results)
        request_id = uuid.uuid4().hex
        out = {
            "model": name, "model_ref": m.ref, "request_id": request_id, "method": body.method,
            "explanations": results, "usage": {"explanations": len(results), "evaluations": int(evaluations)},
        }  # fmt: skip
        event = metering.UsageEvent(
            tenant=key.tenant, key_id=key.key_id, model=name, model_ref=m.ref, texts=0, tokens=0,
            latency_ms=(time.perf_counter() - started) * 1000, request_id=request_id, at=now, plan=plan,
            idempotency_key=idempotency_key, request_hash=request_hash,
            response=out if idempotency_key is not None else None,
            explanations=len(results), evaluations=int(evaluations),
        )  # fmt: skip
        try:
            outcome = await asyncio.wrap_future(state.meter.submit(event))
        except Exception as e:  # the store is unreachable: answer nothing we could not bill
            log.error("usage not recorded for request %s: %s", request_id, e)
            raise ApiError(503, "metering_unavailable", "the usage store is unavailable, so the explanation was "
                           "not billed and is not returned; retry shortly", headers={"Retry-After": "1"}) from None
        if outcome.status == "over_quota":
            state.limiter.refund(bucket, **rate)
            raise _over_explain_quota(key, plan, outcome.retry_after or 1)
        if outcome.status in ("replay", "conflict"):
            stored = (request_hash if outcome.status == "replay" else "", outcome.response or {})
            return _replay(stored, request_hash, idempotency_key)
        metrics.usage_explanations.labels(key.tenant, name).inc(event.explanations)
        return JSONResponse(out, headers={"X-Request-ID": request_id})

    @app.get("/v1/usage", tags=["usage"], responses=_ERRORS)
    async def usage(
        key: Annotated[KeyInfo, Depends(caller)],
        start: Annotated[date | None, Query(alias="from", description="first day, YYYY-MM-DD (UTC)")] = None,
        end: Annotated[date | None, Query(alias="to", description="last day, inclusive")] = None,
        tenant: Annotated[str | None, Query(description="admin keys: any tenant; default all")] = None,
    ) -> dict:
        if not key.admin:
            if tenant is not None and tenant != key.tenant:
                raise ApiError(403, "other_tenant", "a tenant key can only read its own usage")
            tenant = key.tenant
        problem = metering.day_range_problem(start, end, "'from'", "'to'")
        if problem is not None:
            raise ApiError(422, "invalid_request", problem)
        rows = await run_in_threadpool(
            lambda: metering.usage_report(store, config, tenant=tenant, start=start, end=end, explanations=True))
        totals = {field: sum(r[field] for r in rows) for field in (
            "requests", "texts", "tokens", "explain_requests", "explanations", "evaluations")}
        totals.update(cost=round(sum(r["cost"] or 0 for r in rows), 6), currency=config.currency)
        return {"rows": rows, "totals": totals}

    @app.get("/v1/keys", tags=["admin"], responses=_ERRORS)
    async def keys_list(_admin: Annotated[KeyInfo, Depends(admin)], tenant: str | None = None) -> dict:
        found = await run_in_threadpool(lambda: keyring.list_keys(store, tenant=tenant))
        return {"keys": [k.to_dict() for k in found]}

    @app.post("/v1/keys", tags=["admin"], status_code=201, responses=_ERRORS)
    async def keys_create(
        body: Annotated[KeyCreate, Body(openapi_examples=docs.key_examples(list(config.plans)))],
        _admin: Annotated[KeyInfo, Depends(admin)],
    ) -> dict:
        from tunery.errors import TuneryError

        try:
            secret, info = await run_in_threadpool(lambda: keyring.create_key(
                store, tenant=body.tenant, plan=body.plan, models=body.models, admin=body.admin, note=body.note,
                known_plans=list(config.plans)))
        except TuneryError as e:
            raise ApiError(422, "invalid_request", str(e)) from None
        return {"key": secret, **info.to_dict()}

    @app.delete("/v1/keys/{key_id}", tags=["admin"], responses=_ERRORS)
    async def keys_revoke(key_id: str, _admin: Annotated[KeyInfo, Depends(admin)]) -> dict:
        from tunery.errors import TuneryError

        try:
            info = await run_in_threadpool(keyring.revoke_key, store, key_id)
        except TuneryError as e:
            raise ApiError(404, "unknown_key", str(e)) from None
        state.keys.drop(info.key_id)
        return info.to_dict()


def _check_limits(body: PredictRequest | ExplainRequest, m: ServedModel, config: ServeConfig, *,
                  max_texts: int | None = None, max_texts_name: str = "max_texts_per_request") -> None:
    limits = config.limits
    max_texts = limits.max_texts_per_request if max_texts is None else max_texts
    if len(body.texts) > max_texts:
        raise ApiError(413, "too_many_texts", f"{len(body.texts)} texts in one request; the limit is "
                       f"{max_texts_name}={max_texts}: split them over several requests")
    for field_name, values in (("texts", body.texts), ("pairs", body.pairs or [])):
        for i, text in enumerate(values):
            if len(text) > limits.max_chars_per_text:
                raise ApiError(422, "text_too_long", f"{field_name}[{i}] has {len(text)} characters; the limit is "
                               f"max_chars_per_text={limits.max_chars_per_text}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "invalid_text", f"{field_name}[{i}] is not valid Unicode "
                               "(it contains a lone surrogate escape)") from None
    takes_pairs = bool(m.predictor is not None and m.predictor.meta.get("text_pair_column"))
    if body.pairs is not None and len(body.pairs) != len(body.texts):
        raise ApiError(422, "invalid_request", f"{len(body.texts)} texts but {len(body.pairs)} pairs: give one pair per text")
    if m.predictor is not None and takes_pairs and body.pairs is None:
        raise ApiError(422, "pairs_required", f"model {m.name!r} reads text pairs: send 'pairs' beside 'texts'")
    if m.predictor is not None and not takes_pairs and body.pairs is not None:
        raise ApiError(422, "pairs_not_supported", f"model {m.name!r} reads single texts: leave out 'pairs'")


def _rate_limited(key: KeyInfo, rate: float | None, burst: float, wait: int, *, what: str = "") -> None:
    if wait:
        raise ApiError(429, "rate_limited", f"{what}rate limit of plan {key.plan!r} is {rate:g} "
                       f"requests/s per key (burst {burst:g}); retry in {wait} s",
                       headers={"Retry-After": str(wait)}, retry_after=wait)


def _over_explain_quota(key: KeyInfo, plan, retry_after: int) -> ApiError:
    return ApiError(429, "quota_exceeded", f"tenant {key.tenant!r} has used its monthly quota of "
                    f"{plan.explain.monthly_quota} explanations (plan {key.plan!r}); it renews at the start of "
                    "next month (UTC)", headers={"Retry-After": str(retry_after)}, retry_after=retry_after)


def _check_explain_strings(body: ExplainRequest) -> None:
    """The strings beside the texts must be valid Unicode too (no lone surrogate escapes)."""
    for where, value in [("target", body.target)] + [(f"options key {k!r}", k) for k in (body.options or {})]:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "invalid_text", f"{where} is not valid Unicode "
                               "(it contains a lone surrogate escape)") from None


def _zeros(n: int):
    import numpy as np

    return np.zeros(max(n, 1))


def _over_quota(key: KeyInfo, plan, retry_after: int) -> ApiError:
    return ApiError(429, "quota_exceeded", f"tenant {key.tenant!r} has used its monthly quota of "
                    f"{plan.monthly_quota} {plan.quota_unit} (plan {key.plan!r}); it renews at the start of "
                    "next month (UTC)", headers={"Retry-After": str(retry_after)}, retry_after=retry_after)


def _replay(stored: tuple[str, dict], request_hash: str | None, idempotency_key: str) -> JSONResponse:
    stored_hash, response = stored
    if stored_hash != request_hash:
        raise ApiError(422, "idempotency_key_reused", f"Idempotency-Key {idempotency_key!r} was used for a "
                       "different request; use a new key for a new request")
    return JSONResponse(response, headers={"Idempotent-Replayed": "true",
                                           "X-Request-ID": str(response.get("request_id", ""))})


# ----------------------------------------------------------------------------------------------
# For `tunery serve --workers N`: uvicorn imports this factory in each worker process
# ----------------------------------------------------------------------------------------------


def app_from_env() -> FastAPI:
    spec = json.loads(os.environ[ENV_SPEC])
    models = {m["name"]: (m["path"], m["ref"]) for m in spec["models"]}
    return create_app(models, config=load_serve_config(spec.get("config")), workers=int(spec.get("workers", 1)))
