"""The FastAPI application: both APIs over one :class:`Backend`.

``create_app`` is called at build time (by the Ray Serve ingress, by tests, by the local
server); nothing here reads settings or touches a backend at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from serve_app.apis.anthropic.routes import build_anthropic_router
from serve_app.apis.ollama.routes import build_ollama_router
from serve_app.apis.openai.routes import build_openai_router
from serve_app.core.backend import Backend
from serve_app.core.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServingError,
)
from serve_app.core.gateway import Gateway
from serve_app.core.internal_types import ModelCard
from serve_app.core.version import SERVER_VERSION
from serve_app.edge.accounting import Accounting
from serve_app.edge.limits import InProcessLimiter, Limiter
from serve_app.edge.metrics import CONTENT_TYPE, MetricsMirror, ServingMetrics
from serve_app.edge.middleware import (
    METRICS_PATH,
    OPEN_PATHS,
    EdgeMiddleware,
    context_of,
    render_error,
    request_id_of,
)
from serve_app.openapi_document import install_truthful_openapi
from serve_app.settings import IngressSettings
from serve_app.state.assistants.routes import build_assistants_router
from serve_app.state.assistants.run_routes import build_runs_router
from serve_app.state.assistants.runs import RunExecutor
from serve_app.state.assistants.sql_store import SqlAssistantsStore
from serve_app.state.assistants.store import AssistantsStore
from serve_app.state.conversations.routes import build_conversations_router
from serve_app.state.maintenance import sweep_forever
from serve_app.state.responses.background import BackgroundRunner
from serve_app.state.responses.routes import build_responses_router
from serve_app.state.sql_store import SqlStateStore
from serve_app.state.store import StateStore
from serve_app.transport.error_rendering import error_headers
from serve_app.transport.validation_errors import validation_error_to_invalid_request

logger = logging.getLogger(__name__)


def error_response(request: Request, error: ServingError) -> JSONResponse:
    """The error in the API shape of the request's path, with its status and headers."""
    request_id = request_id_of(request.scope)
    ctx = context_of(request.scope)
    if ctx is not None:
        ctx.record_error(error)
    status, body = render_error(request.url.path, error, request_id)
    if status >= 500:
        # The client reads a request id and, for internal failures, no detail: it is here.
        logger.warning("request %s answered %d: %s", request_id, status, error.message)
    return JSONResponse(body, status_code=status, headers=error_headers(error, request_id))


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on the request's path (for a 405's ``Allow``).

    A path that a literal route names (``/v1/threads/runs``) is that route's resource, even
    where a templated one (``/v1/threads/{thread_id}``) also matches it.
    """
    literal: set[str] = set()
    templated: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS"}) if isinstance(route, BaseRoute) else (None, {})
        if match is not None and match != Match.NONE:
            target = templated if "{" in str(getattr(route, "path", "")) else literal
            target |= set(getattr(route, "methods", None) or ())
    return sorted(literal or templated)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> Response:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(request, validation_error_to_invalid_request(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: ServingError
        if exc.status_code == 404:
            error = NotFound(f"No route for {request.method} {request.url.path}.")
        elif exc.status_code == 405:
            error = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.url.path}.",
                headers={"allow": ", ".join(_allowed_methods(request))},
            )
        elif isinstance(exc.__cause__, ServingError):
            # FastAPI reports any failure while reading the body as a 400; keep ours (413).
            error = exc.__cause__
        else:
            error = ServingError(str(exc.detail), status=exc.status_code, code=None)
            if exc.status_code < 500:
                error.type = InvalidRequest.type
        return error_response(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return error_response(request, ServingError("Internal server error."))


def _route_matcher(app: FastAPI) -> Callable[[Scope], str]:
    """The route template a request's scope matches (a bounded metric label), or ``unmatched``."""

    def route_of(scope: Scope) -> str:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", "unmatched"))
        return "unmatched"

    return route_of


def create_app(
    backend: Backend,
    cards: list[ModelCard],
    settings: IngressSettings | None = None,
    *,
    limiter: Limiter | None = None,
    metrics_mirror: MetricsMirror | None = None,
    collectors: Sequence[Collector] = (),
    store: StateStore | None = None,
    assistants_store: AssistantsStore | None = None,
) -> FastAPI:
    """Build the ingress app serving ``cards`` through ``backend``.

    ``limiter`` keeps the per-key limits (in this process by default; the Ray ingress shares
    one across replicas); ``metrics_mirror`` receives every metric observation as well as this
    app's own Prometheus registry (Ray's metrics export under Serve); ``collectors`` add
    families the deployment layer owns (the request routers' per-replica figures); ``store``
    keeps Responses and Conversations (by default the database ``settings.state`` names), and
    ``assistants_store`` the Assistants API's objects (by default in that same database).
    """
    settings = settings or IngressSettings()
    gateway = Gateway(
        backend,
        cards,
        request_deadline_s=settings.request_deadline_s,
        limits=settings.limits,
    )
    keyring = settings.load_keyring(gateway.resolver.resolve)
    metrics = ServingMetrics(metrics_mirror)
    for collector in collectors:
        metrics.registry.register(collector)
    accounting = Accounting(
        metrics, limiter or InProcessLimiter(settings.lease_ttl_s()), usage_log=settings.usage_log
    )
    state_store = store or SqlStateStore(settings.state.database_url())
    runner = BackgroundRunner(state_store, settings.state)
    if assistants_store is None:
        if not isinstance(state_store, SqlStateStore):
            raise TypeError("a state store other than SqlStateStore needs its own assistants_store")
        assistants_store = SqlAssistantsStore(state_store)
    executor = RunExecutor(gateway, assistants_store, settings.state, worker=runner.worker)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Migrate before the first request, and keep the store tidy while serving. A database
        # that is down must not keep the stateless APIs from starting: its routes answer 503
        # and the store connects on first use once it is back.
        try:
            await state_store.start()
        except ServingError as exc:
            logger.warning("state store not available at start-up: %s", exc.message)
        sweeper = asyncio.create_task(sweep_forever(state_store, settings.state, assistants_store))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await runner.close()
            await executor.close()
            await state_store.close()

    app = FastAPI(
        title="LLM serving cluster",
        description="OpenAI-, Ollama- and Anthropic-compatible API in front of Ray Serve and vLLM.",
        version=SERVER_VERSION,
        lifespan=lifespan,
    )
    dimensions = [c.embedding_dimensions for c in cards if c.kind == "embed" and c.embedding_dimensions]
    install_truthful_openapi(app, settings.limits, max(dimensions, default=None), keyed=bool(keyring))
    app.state.gateway = gateway
    app.state.store = state_store
    app.state.metrics = metrics
    _install_error_handlers(app)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        """Liveness of the ingress (no key needed)."""
        return {"status": "ok"}

    @app.get(METRICS_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """This replica's metrics in the Prometheus text format (needs the key unless metrics_open)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def root() -> str:
        """Ollama's banner; clients probe it to find a server."""
        return "Ollama is running"

    # One route per method, so each OpenAPI operation has its own operationId.
    for method in ("GET", "HEAD"):
        app.add_api_route(
            "/", root, methods=[method], tags=["ollama"], response_class=PlainTextResponse,
            name=f"root_{method.lower()}",
        )

    app.include_router(build_openai_router(gateway))
    app.include_router(build_ollama_router(gateway, ollama_version=settings.ollama_version))
    app.include_router(build_anthropic_router(gateway))
    app.include_router(build_responses_router(gateway, state_store, settings.state, runner))
    app.include_router(build_conversations_router(state_store, settings.state))
    # Runs first: POST /v1/threads/runs must not be taken for POST /v1/threads/{thread_id}.
    app.include_router(build_runs_router(gateway, assistants_store, settings.state, executor, accounting.limiter))
    app.include_router(build_assistants_router(gateway, assistants_store, settings.state, executor.cancel_local))

    app.add_middleware(
        EdgeMiddleware,
        api_keys=keyring,
        max_body_bytes=settings.max_body_bytes,
        accounting=accounting,
        echo_request_id=settings.echo_request_id,
        open_paths=OPEN_PATHS | ({METRICS_PATH} if settings.metrics_open else set()),
        route_of=_route_matcher(app),
        max_header_count=settings.max_header_count,
        max_header_bytes=settings.max_header_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    if settings.cors_origins:
        # Outermost, so browsers' preflight requests (which carry no key) are answered here.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-request-id"],
        )
    return app
