"""The ASGI edge in front of every route: request id, body-size limit and API keys.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the latter buffers
and re-wraps streaming responses, which costs per chunk and hides client disconnects.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.error_rendering import error_headers, ollama_error_body, openai_error_body
from serve_app.errors import AuthenticationFailed, PayloadTooLarge, ServingError
from serve_app.internal_types import new_request_id

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
# Paths that stay open without a key: liveness probes (the design's health contract).
OPEN_PATHS = frozenset({"/health", "/-/healthz"})
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def api_of_path(path: str) -> str:
    """Which API's error shape a path answers in: ``openai`` or ``ollama``."""
    if path == "/" or path.startswith("/api/") or path == "/api":
        return "ollama"
    return "openai"


def render_error_body(path: str, error: ServingError, request_id: str | None) -> dict[str, Any]:
    """The error body in the API of ``path``."""
    if api_of_path(path) == "ollama":
        return ollama_error_body(error, request_id)
    return openai_error_body(error, request_id)


def request_id_of(scope: Scope) -> str | None:
    """The request id the edge assigned to this request."""
    return scope.get("state", {}).get("request_id")


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


def _replay(buffered: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out ``buffered`` first, then defers to the real one."""
    pending = list(buffered)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class EdgeMiddleware:
    """Assigns request ids, enforces the body limit and checks bearer keys."""

    def __init__(
        self, app: ASGIApp, *, api_keys: Iterable[str], max_body_bytes: int, echo_request_id: bool = True
    ) -> None:
        self.app = app
        # Behind Ray Serve's proxy the proxy echoes x-request-id itself; a second copy would
        # make the header a list.
        self.echo_request_id = echo_request_id
        self._keys = [k.encode() for k in api_keys]
        self.max_body_bytes = max_body_bytes

    def _key_ok(self, scope: Scope) -> bool:
        if not self._keys:
            return True
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        token = token.strip() if scheme.lower() == b"bearer" else b""
        # Compare against every key without stopping early, so timing says nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        return matched

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
        scope.setdefault("state", {})["request_id"] = request_id
        path: str = scope["path"]

        if path not in OPEN_PATHS and not self._key_ok(scope):
            error = AuthenticationFailed(
                "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'."
            )
            await self._send_error(scope, send, error, request_id)
            return
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_body_bytes:
            await self._send_error(scope, send, self._too_large(), request_id)
            return
        if content_length is None and _has_chunked_body(scope):
            # No declared length: read the body here, so an oversized one is refused with 413
            # whatever the route does with it (FastAPI turns errors while reading into 400s).
            buffered = await self._read_limited(receive)
            if buffered is None:
                await self._send_error(scope, send, self._too_large(), request_id)
                return
            receive = _replay(buffered, receive)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Raised inside the route, where the app's ServingError handler renders it.
                    raise self._too_large()
            return message

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Error responses already carry the id; every response carries it exactly once.
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                if self.echo_request_id:
                    headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, limited_receive, send_with_request_id)

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
        body = json.dumps(render_error_body(scope["path"], error, request_id)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.encode(), v.encode()) for k, v in error_headers(error, request_id).items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
