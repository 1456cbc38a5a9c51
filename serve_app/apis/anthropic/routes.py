"""Thin handlers for Anthropic's Messages API: validate, adapt, call the gateway, adapt back.

``GET /v1/models`` stays the OpenAI route (the Anthropic SDK's listing reads its ``data``, as it
does against vLLM); keys come as ``x-api-key`` or a bearer token (the edge accepts both), and
``anthropic-version`` / ``anthropic-beta`` headers are accepted and need no answer.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serve_app.apis.anthropic import adapter
from serve_app.apis.anthropic import schemas as wire
from serve_app.core.errors import ServingError
from serve_app.core.gateway import Batch, Gateway
from serve_app.edge.middleware import context_of, request_id_of
from serve_app.edge.request_context import timing_headers
from serve_app.transport.disconnect import unless_disconnected
from serve_app.transport.error_rendering import anthropic_error_body
from serve_app.transport.framing import SSE_MEDIA_TYPE, SSE_RESPONSE_DOC, sse_event_frame
from serve_app.transport.streaming import stream_frames, streaming_response
from serve_app.transport.unsupported import unsupported_headers


def _frames(events: list[dict[str, object]]) -> list[bytes]:
    return [sse_event_frame(str(event["type"]), event) for event in events]


def build_anthropic_router(gateway: Gateway) -> APIRouter:
    """The ``/v1/messages`` routes over ``gateway``."""
    router = APIRouter(prefix="/v1", tags=["anthropic"])

    @router.post("/messages", responses=SSE_RESPONSE_DOC)
    async def create_message(body: wire.MessagesRequest, request: Request) -> Response:
        """A message, streamed as Anthropic's SSE events when ``stream`` is true."""
        request_id = request_id_of(request.scope) or ""
        card = gateway.card(body.model)
        internal, unhonoured = adapter.messages_request_to_internal(body, card.name, request_id)
        gateway.check_generation_supported(card, internal)
        # The SDK reads the request id of a reply from ``request-id``.
        headers = {**unsupported_headers(unhonoured, request_id), "request-id": request_id}
        message_id = adapter.new_message_id()
        if not body.stream:
            result = await unless_disconnected(request, gateway.generate(internal))
            headers.update(timing_headers(context_of(request.scope), streamed=False))
            return JSONResponse(adapter.message_body(result, body.model, message_id), headers=headers)

        first, stream = await unless_disconnected(request, gateway.open_stream(internal))
        headers.update(timing_headers(context_of(request.scope), streamed=True))
        events = adapter.MessageEvents(body.model, message_id)

        def frame_batch(batch: Batch) -> list[bytes]:
            return [frame for chunk in batch for frame in _frames(events.chunk(chunk))]

        def closing() -> list[bytes]:
            return _frames(events.closing())

        def render_error(error: ServingError) -> bytes:
            return sse_event_frame("error", anthropic_error_body(error, request_id))

        body_iter = stream_frames(first, stream, frame_batch, closing, render_error)
        return streaming_response(body_iter, SSE_MEDIA_TYPE, headers)

    @router.post("/messages/count_tokens")
    async def count_tokens(body: wire.CountTokensRequest, request: Request) -> Response:
        """The prompt's tokens under the model's own chat template (tools and system included)."""
        request_id = request_id_of(request.scope) or ""
        card = gateway.card(body.model)
        internal, unhonoured = adapter.count_request_to_internal(body, card.name, request_id)
        tokens = await unless_disconnected(request, gateway.count_tokens(card, internal))
        headers = {**unsupported_headers(unhonoured, request_id), "request-id": request_id}
        return JSONResponse({"input_tokens": tokens}, headers=headers)

    return router
