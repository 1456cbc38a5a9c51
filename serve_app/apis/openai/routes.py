"""Thin handlers for the OpenAI routes: validate, adapt, call the gateway, adapt back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serve_app.apis.openai import adapter
from serve_app.apis.openai import schemas as wire
from serve_app.core.errors import ServingError
from serve_app.core.gateway import Batch, Gateway
from serve_app.core.internal_types import EmbeddingRequest, ModelCard, ModelStatus
from serve_app.core.streams import merge_streams
from serve_app.edge.middleware import context_of, request_id_of
from serve_app.edge.request_context import timing_headers
from serve_app.transport.disconnect import unless_disconnected
from serve_app.transport.error_rendering import openai_error_body
from serve_app.transport.framing import SSE_DONE, SSE_MEDIA_TYPE, SSE_RESPONSE_DOC, sse_frame
from serve_app.transport.streaming import stream_frames, streaming_response
from serve_app.transport.unsupported import unsupported_headers


def build_openai_router(gateway: Gateway) -> APIRouter:
    """The ``/v1`` routes over ``gateway`` (whose limits bound every request)."""
    router = APIRouter(prefix="/v1", tags=["openai"])

    @router.post("/chat/completions", responses=SSE_RESPONSE_DOC)
    async def chat_completions(body: wire.ChatCompletionRequest, request: Request) -> Response:
        """Chat completion, streamed as SSE when ``stream`` is true."""
        request_id = request_id_of(request.scope)
        card = gateway.card(body.model)
        internal, unhonoured = adapter.chat_request_to_internal(body, card.name, request_id or "")
        gateway.check_generation_supported(card, internal)
        headers = unsupported_headers(unhonoured, request_id)
        if not body.stream:
            result = await unless_disconnected(request, gateway.generate(internal))
            headers.update(timing_headers(context_of(request.scope), streamed=False))
            return JSONResponse(adapter.chat_completion_body(result, body.model), headers=headers)

        first, stream = await unless_disconnected(request, gateway.open_stream(internal))
        headers.update(timing_headers(context_of(request.scope), streamed=True))
        chunks = adapter.ChatChunkAdapter(body.model, include_usage=internal.include_usage)

        def frame_batch(batch: Batch) -> list[bytes]:
            return [sse_frame(chunks.chunk(c)) for c in batch]

        def closing() -> list[bytes]:
            return ([sse_frame(chunks.usage_chunk())] if chunks.include_usage else []) + [SSE_DONE]

        def render_error(error: ServingError) -> bytes:
            return sse_frame(openai_error_body(error, request_id))

        body_iter = stream_frames(first, stream, frame_batch, closing, render_error)
        return streaming_response(body_iter, SSE_MEDIA_TYPE, headers)

    @router.post("/completions", responses=SSE_RESPONSE_DOC)
    async def completions(body: wire.CompletionRequest, request: Request) -> Response:
        """Legacy text completion; a list of prompts gives ``n`` choices per prompt."""
        request_id = request_id_of(request.scope)
        card = gateway.card(body.model)
        internals, unhonoured = adapter.completion_requests_to_internal(
            body, card.name, request_id or "", gateway.limits
        )
        for internal in internals:
            gateway.check_generation_supported(card, internal)
        headers = unsupported_headers(unhonoured, request_id)
        n = internals[0].sampling.n
        echo = [p if body.echo and isinstance(p, str) else None for p in (r.prompt for r in internals)]
        if not body.stream:
            results = list(await unless_disconnected(request, asyncio.gather(*(gateway.generate(r) for r in internals))))
            headers.update(timing_headers(context_of(request.scope), streamed=False))
            return JSONResponse(adapter.completion_body(results, body.model, echo, n), headers=headers)

        streams = [_reindexed(gateway.start_generation(r), group * n) for group, r in enumerate(internals)]
        merged = merge_streams(streams)
        first, stream = await unless_disconnected(request, gateway.open_stream_from(merged))
        headers.update(timing_headers(context_of(request.scope), streamed=True))
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        echo_by_choice = {g * n + j: p for g, p in enumerate(echo) if p for j in range(n)}
        chunks = adapter.CompletionChunkAdapter(body.model, include_usage, echo_by_choice)

        def frame_batch(batch: Batch) -> list[bytes]:
            return [sse_frame(chunks.chunk(c, prompt_group=c.index // n)) for c in batch]

        def closing() -> list[bytes]:
            return ([sse_frame(chunks.usage_chunk())] if include_usage else []) + [SSE_DONE]

        def render_error(error: ServingError) -> bytes:
            return sse_frame(openai_error_body(error, request_id))

        body_iter = stream_frames(first, stream, frame_batch, closing, render_error)
        return streaming_response(body_iter, SSE_MEDIA_TYPE, headers)

    @router.post("/embeddings")
    async def embeddings(body: wire.EmbeddingsRequest, request: Request) -> dict[str, Any]:
        """Embeddings of a string, strings or token-id arrays."""
        card = gateway.card(body.model)
        internal = EmbeddingRequest(
            request_id=request_id_of(request.scope) or "",
            model=card.name,
            inputs=adapter.embedding_inputs(body.input),
            dimensions=body.dimensions,
            truncate=False,  # OpenAI refuses over-long inputs rather than truncating them
        )
        gateway.check_embedding_supported(card, internal)
        result = await unless_disconnected(request, gateway.embed(internal))
        return adapter.embeddings_body(result, body.model, body.encoding_format)

    @router.get("/models", response_model=wire.ModelList)
    async def list_models() -> dict[str, Any]:
        """Every configured model, with its state (ready, starting, failed)."""
        statuses = await gateway.model_statuses()
        return {"object": "list", "data": [adapter.model_object(s) for s in statuses]}

    @router.get("/models/{model:path}", response_model=wire.ModelObject)
    async def retrieve_model(model: str) -> dict[str, Any]:
        """One model by any accepted name."""
        card = await gateway.existing_card(model)
        for status in await gateway.model_statuses():
            if status.card.name == card.name:
                return adapter.model_object(status)
        return adapter.model_object(status_for_card(card))

    return router


def status_for_card(card: ModelCard) -> ModelStatus:
    """A ``starting`` status for a configured model the backend does not list yet."""
    return ModelStatus(card=card, state="starting", replicas=0)


async def _reindexed(stream: AsyncIterator[Batch], offset: int) -> AsyncIterator[Batch]:
    """``stream`` with every chunk's choice index shifted by ``offset``."""
    try:
        async for batch in stream:
            if offset:
                for chunk in batch:
                    chunk.index += offset
            yield batch
    finally:
        await stream.aclose()
