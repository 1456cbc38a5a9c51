"""Thin handlers for the Ollama routes: validate, adapt, call the gateway, adapt back."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response

from serve_app.apis.ollama import adapter
from serve_app.apis.ollama import schemas as wire
from serve_app.core.backend import fold_chunks
from serve_app.core.errors import PermissionDenied, ServingError
from serve_app.core.gateway import Batch, Gateway
from serve_app.core.internal_types import EmbeddingRequest, GenerationRequest, GenerationResult
from serve_app.core.streams import collect
from serve_app.edge.middleware import request_id_of
from serve_app.transport.disconnect import unless_disconnected
from serve_app.transport.error_rendering import ollama_error_body
from serve_app.transport.framing import NDJSON_MEDIA_TYPE, NDJSON_RESPONSE_DOC, ndjson_line
from serve_app.transport.streaming import stream_frames, streaming_response
from serve_app.transport.unsupported import unsupported_headers

MANAGEMENT_ROUTES: list[tuple[str, list[str]]] = [
    ("/pull", ["POST"]),
    ("/push", ["POST"]),
    ("/create", ["POST"]),
    ("/copy", ["POST"]),
    ("/delete", ["DELETE"]),
    ("/blobs/{digest}", ["HEAD", "POST"]),
]


def build_ollama_router(gateway: Gateway, *, ollama_version: str) -> APIRouter:
    """The ``/api`` routes over ``gateway``; ``ollama_version`` is what ``/api/version`` reports."""
    router = APIRouter(prefix="/api", tags=["ollama"])

    async def respond(
        request: Request,
        body: wire._GenerationFields,
        internal: GenerationRequest,
        unhonoured: list[str],
        is_chat: bool,
    ) -> Response:
        request_id = request_id_of(request.scope)
        headers = unsupported_headers(unhonoured, request_id)
        timings = adapter.Timings()
        model = body.model
        if body.stream is False:
            async def fold() -> GenerationResult:
                first_batch, rest = await gateway.open_stream(internal)
                timings.mark_token()
                return fold_chunks((first_batch or []) + await collect(rest))

            result = await unless_disconnected(request, fold())
            choice = result.choices[0] if result.choices else None
            reply = {
                "model": model,
                "created_at": adapter.rfc3339_nano(),
                **adapter.result_fields(result, is_chat),
                "done": True,
                "done_reason": adapter.done_reason(choice.finish_reason if choice else None),
                **timings.final_fields(result.usage.prompt_tokens, result.usage.completion_tokens),
            }
            return JSONResponse(reply, headers=headers)

        first, stream = await unless_disconnected(request, gateway.open_stream(internal))
        timings.mark_token()
        state: dict[str, Any] = {"finish": None, "prompt": 0, "completion": 0}

        def frame_batch(batch: Batch) -> list[bytes]:
            lines = []
            for chunk in batch:
                if chunk.usage is not None:
                    state["prompt"] = chunk.usage.prompt_tokens
                    state["completion"] = chunk.usage.completion_tokens
                if chunk.finish_reason is not None:
                    state["finish"] = chunk.finish_reason
                if chunk.text or chunk.reasoning or chunk.tool_calls or chunk.logprobs:
                    lines.append(ndjson_line({
                        "model": model,
                        "created_at": adapter.rfc3339_nano(),
                        **adapter.chunk_fields(chunk, is_chat),
                        "done": False,
                    }))
            return lines

        def closing() -> list[bytes]:
            final = {
                "model": model,
                "created_at": adapter.rfc3339_nano(),
                **({"message": {"role": "assistant", "content": ""}} if is_chat else {"response": ""}),
                "done": True,
                "done_reason": adapter.done_reason(state["finish"]),
                **timings.final_fields(state["prompt"], state["completion"]),
            }
            return [ndjson_line(final)]

        def render_error(error: ServingError) -> bytes:
            return ndjson_line(ollama_error_body(error, request_id))

        body_iter = stream_frames(first, stream, frame_batch, closing, render_error)
        return streaming_response(body_iter, NDJSON_MEDIA_TYPE, headers)

    async def load_only(body: wire._GenerationFields, is_chat: bool) -> Response:
        """No prompt: load the model (a cold one loads now) or, with ``keep_alive`` 0, unload it."""
        card = gateway.card(body.model)
        keep_alive_s = adapter.keep_alive_seconds(body.keep_alive)
        await gateway.load(card.name, keep_alive_s)
        return JSONResponse(adapter.load_reply(body.model, is_chat, unload=keep_alive_s == 0))

    @router.post("/generate", responses=NDJSON_RESPONSE_DOC)
    async def generate(body: wire.GenerateRequest, request: Request) -> Response:
        """Completion of ``prompt``; streamed as NDJSON unless ``stream`` is false."""
        if not body.prompt and not body.images and not body.suffix:
            return await load_only(body, is_chat=False)
        card = gateway.card(body.model)
        internal, unhonoured = adapter.generate_to_internal(body, card.name, request_id_of(request.scope) or "")
        gateway.check_generation_supported(card, internal)
        return await respond(request, body, internal, unhonoured, is_chat=False)

    @router.post("/chat", responses=NDJSON_RESPONSE_DOC)
    async def chat(body: wire.ChatRequest, request: Request) -> Response:
        """Chat; streamed as NDJSON unless ``stream`` is false."""
        if not body.messages:
            return await load_only(body, is_chat=True)
        card = gateway.card(body.model)
        internal, unhonoured = adapter.chat_to_internal(body, card.name, request_id_of(request.scope) or "")
        gateway.check_generation_supported(card, internal)
        return await respond(request, body, internal, unhonoured, is_chat=True)

    @router.post("/embed")
    async def embed(body: wire.EmbedRequest, request: Request) -> Response:
        """Embeddings of one or more inputs."""
        started = time.perf_counter_ns()
        card = gateway.card(body.model)
        inputs = [body.input] if isinstance(body.input, str) else list(body.input)
        inputs = [text for text in inputs if text != ""]
        _, _, unhonoured = adapter.options_to_sampling(body.options)
        unhonoured += body.unknown_fields()
        headers = unsupported_headers(unhonoured, request_id_of(request.scope))
        internal = EmbeddingRequest(
            request_id=request_id_of(request.scope) or "",
            model=card.name,
            inputs=inputs,
            dimensions=body.dimensions,
            truncate=body.truncate is not False,
            keep_alive_s=adapter.keep_alive_seconds(body.keep_alive),
        )
        gateway.check_embedding_supported(card, internal)
        vectors: list[list[float]] = []
        prompt_tokens = 0
        if inputs:
            result = await unless_disconnected(request, gateway.embed(internal))
            vectors, prompt_tokens = result.vectors, result.prompt_tokens
        total = max(time.perf_counter_ns() - started, 1)
        reply = {
            "model": body.model,
            "embeddings": vectors,
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
        }
        return JSONResponse(reply, headers=headers)

    @router.post("/embeddings")
    async def embeddings(body: wire.LegacyEmbeddingsRequest, request: Request) -> dict[str, Any]:
        """The legacy single-prompt embeddings route."""
        card = gateway.card(body.model)
        if not body.prompt:
            return {"embedding": []}
        internal = EmbeddingRequest(request_id=request_id_of(request.scope) or "", model=card.name, inputs=[body.prompt])
        gateway.check_embedding_supported(card, internal)
        result = await unless_disconnected(request, gateway.embed(internal))
        return {"embedding": result.vectors[0]}

    @router.get("/tags")
    async def tags() -> dict[str, Any]:
        """Every configured model, with its state."""
        return {"models": [adapter.tags_entry(s) for s in await gateway.model_statuses()]}

    @router.get("/ps")
    async def ps() -> dict[str, Any]:
        """Models with live replicas, and how many."""
        return {"models": [adapter.ps_entry(s) for s in await gateway.model_statuses() if s.replicas > 0]}

    @router.post("/show")
    async def show(body: wire.ShowRequest) -> dict[str, Any]:
        """A model's details and capabilities."""
        return adapter.show_body(await gateway.existing_card(body.model or body.name))

    @router.get("/version")
    async def version() -> dict[str, str]:
        """The Ollama API version we speak."""
        return {"version": ollama_version}

    for path, methods in MANAGEMENT_ROUTES:
        refusal = _management_refusal(path)
        for method in methods:
            # One route per method, so each OpenAPI operation has its own operationId.
            name = refusal.__name__ if len(methods) == 1 else f"{refusal.__name__}_{method.lower()}"
            router.add_api_route(
                path, refusal, methods=[method], name=name,
                responses={403: {"description": "Always: models are managed in config.yaml."}},
            )
    return router


def _management_refusal(path: str) -> Any:
    message = (
        f"/api{path.split('/{')[0]} is disabled: models are managed in config.yaml on the server, "
        "not through the API."
    )

    if "{digest}" in path:
        # The path parameter is declared, so the OpenAPI document describes the route truly.
        async def refuse_blob(digest: str) -> Response:
            raise PermissionDenied(message)

        refuse: Any = refuse_blob
    else:

        async def refuse() -> Response:
            raise PermissionDenied(message)

    refuse.__name__ = f"refuse_{path.strip('/').split('/')[0]}"
    refuse.__doc__ = "Model management is done in config.yaml; this route always refuses."
    return refuse
