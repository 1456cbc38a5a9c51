"""The ASGI edge in front of every route: request id, body-size limit, text check, API keys and key limits.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the latter buffers
and re-wraps streaming responses, which costs per chunk and hides client disconnects.

It also creates each request's :class:`RequestContext`, and finalizes it exactly once after the
app returns (the response fully sent, streams included, or the client gone): that is where the
limiter slot is released, tokens are charged, metrics are recorded and the usage line written.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.core.errors import (
    AuthenticationFailed,
    HeadersTooLarge,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServingError,
)
from serve_app.core.internal_types import new_request_id
from serve_app.core.observation import reset_observer, set_observer
from serve_app.edge.accounting import Accounting
from serve_app.edge.body_text import unencodable_text_error
from serve_app.edge.keys import ApiKey
from serve_app.edge.limits import retry_after_headers
from serve_app.edge.request_context import RequestContext
from serve_app.transport.error_rendering import (
    anthropic_error_body,
    anthropic_status,
    error_headers,
    ollama_error_body,
    openai_error_body,
)

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# Paths that stay open without a key: liveness probes (the design's health contract).
OPEN_PATHS = frozenset({"/health", "/-/healthz"})
METRICS_PATH = "/metrics"
# Paths left out of request metrics, usage lines and key limits (probes and scrapes).
UNACCOUNTED_PATHS = OPEN_PATHS | {METRICS_PATH}
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


ANTHROPIC_PATH = "/v1/messages"


def api_of_path(path: str) -> str:
    """Which API a path belongs to (its error shape, its metrics' ``api`` label): ``openai``,
    ``ollama`` or ``anthropic``."""
    if path == "/" or path.startswith("/api/") or path == "/api":
        return "ollama"
    if path == ANTHROPIC_PATH or path.startswith(ANTHROPIC_PATH + "/"):
        return "anthropic"
    return "openai"


def render_error(path: str, error: ServingError, request_id: str | None) -> tuple[int, dict[str, Any]]:
    """The error's status and body in the API of ``path`` (Anthropic has its own statuses)."""
    api = api_of_path(path)
    if api == "ollama":
        return error.status, ollama_error_body(error, request_id)
    if api == "anthropic":
        return anthropic_status(error), anthropic_error_body(error, request_id)
    return error.status, openai_error_body(error, request_id)


def request_id_of(scope: Scope) -> str | None:
    """The request id the edge assigned to this request."""
    return scope.get("state", {}).get("request_id")


def context_of(scope: Scope) -> RequestContext | None:
    """The accounting context the edge created for this request (None for unaccounted paths)."""
    return scope.get("state", {}).get("ctx")


def _treat_body_as_json(scope: Scope, content_type_at: int | None) -> None:
    """Every body we accept is JSON, whatever the client labels it.

    Ollama reads bodies as JSON regardless of Content-Type, and its documented examples use
    ``curl -d``, which labels them ``application/x-www-form-urlencoded``.
    """
    headers = list(scope["headers"])
    if content_type_at is not None:
        if b"json" in headers[content_type_at][1].lower():
            return
        headers[content_type_at] = (b"content-type", b"application/json")
    else:
        headers.append((b"content-type", b"application/json"))
    scope["headers"] = headers


def _has_chunked_body(scope: Scope) -> bool:
    """Whether the request announces a body without a length (``Transfer-Encoding: chunked``)."""
    return any(name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in scope["headers"])


# A response body is handed on in pieces of at most this size: behind Ray Serve the replica
# sends each ASGI message to the proxy as one gRPC message, which is limited to 4 MiB (a reply
# of 2,048 embeddings is about 8 MB of JSON).
MAX_BODY_MESSAGE_BYTES = 1024 * 1024


async def _send_in_pieces(send: Send, body: bytes, more_body: bool) -> None:
    """Send ``body`` as several ``http.response.body`` messages of bounded size."""
    view = memoryview(body)
    for start in range(0, len(body), MAX_BODY_MESSAGE_BYTES):
        end = start + MAX_BODY_MESSAGE_BYTES
        last = end >= len(body)
        await send({"type": "http.response.body", "body": bytes(view[start:end]), "more_body": more_body or not last})


def _replay(buffered: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``buffered`` first, then defers to the real one."""
    pending = list(buffered)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class EdgeMiddleware:
    """Assigns request ids, enforces the body limit, checks bearer keys and their limits."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: Iterable[ApiKey],
        max_body_bytes: int,
        accounting: Accounting,
        echo_request_id: bool = True,
        open_paths: Iterable[str] = OPEN_PATHS,
        route_of: Callable[[Scope], str] | None = None,
        max_header_count: int = 100,
        max_header_bytes: int = 16 * 1024,
        body_timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        # Behind Ray Serve's proxy the proxy echoes x-request-id itself; a second copy would
        # make the header a list.
        self.echo_request_id = echo_request_id
        self._keys = list(api_keys)
        self.max_body_bytes = max_body_bytes
        self.accounting = accounting
        self.open_paths = frozenset(open_paths)
        self._route_of = route_of or (lambda scope: "unmatched")
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes
        self.body_timeout_s = body_timeout_s

    def _authenticate(self, scope: Scope) -> ApiKey | None | bool:
        """The key the request carries; ``None`` when no keys are set, ``False`` when refused.

        The key comes as ``Authorization: Bearer`` (OpenAI, Ollama) or ``x-api-key``
        (Anthropic's SDK); either may carry it, with the same keys and limits.
        """
        if not self._keys:
            return None
        tokens: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    tokens.append(token.strip())
            elif name == b"x-api-key":
                tokens.append(value.strip())
        # Compare against every key without stopping early, so timing says nothing.
        found: ApiKey | None = None
        for token in tokens[:2] or [b""]:
            for key in self._keys:
                if hmac.compare_digest(token, key.secret):
                    found = key
        return found if found is not None else False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        content_length = None
        content_type_at = None
        for i, (name, value) in enumerate(scope["headers"]):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
            elif name == b"content-length":
                content_length = value
            elif name == b"content-type":
                content_type_at = i
        if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            _treat_body_as_json(scope, content_type_at)
        request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path: str = scope["path"]
        ctx = None
        if path not in UNACCOUNTED_PATHS:
            ctx = state["ctx"] = RequestContext(request_id, api_of_path(path), scope["method"], path)

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                if ctx is not None:
                    ctx.status = message["status"]
                # Error responses already carry the id; every response carries it exactly once.
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                if self.echo_request_id:
                    headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if len(body) > MAX_BODY_MESSAGE_BYTES:
                    await _send_in_pieces(send, body, bool(message.get("more_body", False)))
                    if ctx is not None and not message.get("more_body", False):
                        ctx.response_complete = True
                    return
                if not message.get("more_body", False) and ctx is not None:
                    ctx.response_complete = True
            await send(message)

        refusal = self._oversized_headers(scope) or await self._refusal(scope, content_length, ctx)
        if refusal is not None:
            if ctx is not None:
                ctx.record_error(refusal)
            await self._send_error(scope, send_with_request_id, refusal, request_id)
            if ctx is not None:
                ctx.route = self._route_of(scope)
                await self.accounting.finish(ctx, started=False)
            return
        if content_length is None and _has_chunked_body(scope):
            # No declared length: read the body here, so an oversized one is refused with 413
            # whatever the route does with it (FastAPI turns errors while reading into 400s).
            try:
                async with asyncio.timeout(self.body_timeout_s):
                    buffered = await self._read_limited(receive)
            except TimeoutError:
                timeout = RequestTimeout(f"The request body was not received within {self.body_timeout_s:g} s.")
                await self._refuse_late(scope, send_with_request_id, timeout, request_id, ctx)
                return
            if buffered is None:
                await self._refuse_late(scope, send_with_request_id, self._too_large(), request_id, ctx)
                return
            receive = _replay(buffered, receive)

        received = 0
        parts: list[bytes] = []
        body_deadline: float | None = None
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_deadline, body_done
            if body_done:
                message = await receive()  # after the body: only the disconnect, never timed
            else:
                loop = asyncio.get_running_loop()
                if body_deadline is None:
                    body_deadline = loop.time() + self.body_timeout_s
                try:
                    async with asyncio.timeout_at(body_deadline):
                        message = await receive()
                except TimeoutError:
                    raise RequestTimeout(
                        f"The request body was not received within {self.body_timeout_s:g} s."
                    ) from None
            if message["type"] == "http.request":
                part = message.get("body", b"")
                received += len(part)
                if received > self.max_body_bytes:
                    # Raised inside the route, where the app's ServingError handler renders it.
                    raise self._too_large()
                parts.append(part)
                if not message.get("more_body", False):
                    body_done = True
                    problem = unencodable_text_error(part if len(parts) == 1 else b"".join(parts))
                    parts.clear()
                    if problem is not None:
                        raise problem
            return message

        if ctx is None:
            await self.app(scope, limited_receive, send_with_request_id)
            return
        token = set_observer(ctx)
        self.accounting.start(ctx)
        try:
            await self.app(scope, limited_receive, send_with_request_id)
        except Exception as exc:
            # Starlette's outermost handler answers 500 for it, outside this middleware.
            ctx.record_error(exc)
            if ctx.status is None:
                ctx.status, ctx.response_complete = 500, True
            raise
        finally:
            reset_observer(token)
            route = scope.get("route")
            ctx.route = getattr(route, "path", None) or self._route_of(scope)
            await self.accounting.finish(ctx, started=True)

    def _oversized_headers(self, scope: Scope) -> ServingError | None:
        """431 for more headers, or more header bytes, than the limits (Ray Serve's own HTTP
        server behind HAProxy parses any number of any size)."""
        headers = scope["headers"]
        if len(headers) > self.max_header_count:
            return HeadersTooLarge(f"The request has {len(headers)} headers; at most {self.max_header_count} are accepted.")
        size = sum(len(name) + len(value) for name, value in headers)
        if size > self.max_header_bytes:
            return HeadersTooLarge(f"The request headers hold {size} bytes; at most {self.max_header_bytes} are accepted.")
        return None

    async def _refusal(self, scope: Scope, content_length: bytes | None, ctx: RequestContext | None) -> ServingError | None:
        """Why the request is refused before the app sees it (key, size, key limits), if it is."""
        key = None
        if scope["path"] not in self.open_paths:
            key = self._authenticate(scope)
            if key is False:
                return AuthenticationFailed(
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
                )
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_body_bytes:
            return self._too_large()
        if ctx is None or not isinstance(key, ApiKey):
            return None
        ctx.key = key
        if not key.limits.limited:
            return None
        admission = await self.accounting.limiter.admit(key.limits)
        if admission.admitted:
            ctx.lease = admission.lease
            return None
        ctx.rejected_limit = admission.limit
        error = RateLimited(
            f"Rate limit reached for key '{key.name}' ({admission.limit}); "
            f"retry after {admission.retry_after_s:.2f} s.",
            headers=retry_after_headers(admission.retry_after_s),
        )
        ctx.record_error(error)
        return error

    async def _refuse_late(
        self, scope: Scope, send: Send, error: ServingError, request_id: str, ctx: RequestContext | None
    ) -> None:
        """Refuse after admission (an oversized chunked body): answer, then finish the context."""
        await self._send_error(scope, send, error, request_id)
        if ctx is not None:
            ctx.record_error(error)
            ctx.route = self._route_of(scope)
            self.accounting.start(ctx)
            await self.accounting.finish(ctx, started=True)

    async def _read_limited(self, receive: Receive) -> list[Message] | None:
        """The request's body messages, or ``None`` once they exceed the limit."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages  # the client went away; the app sees the disconnect
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"Request body is larger than the limit of {self.max_body_bytes} bytes.")

    async def _send_error(self, scope: Scope, send: Send, error: ServingError, request_id: str) -> None:
        status, rendered = render_error(scope["path"], error, request_id)
        body = json.dumps(rendered).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in error_headers(error, request_id).items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
