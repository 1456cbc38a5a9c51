"""Thin handlers for ``/v1/responses``: rebuild the turn's history, generate, store, reply."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from serve_app.core.errors import InvalidRequest, NotFound, ServingError, Unsupported
from serve_app.core.gateway import Batch, Gateway
from serve_app.core.streams import collect
from serve_app.edge.middleware import context_of, request_id_of
from serve_app.edge.request_context import timing_headers
from serve_app.state.config import StateSettings
from serve_app.state.owner import owner_of
from serve_app.state.responses import adapter
from serve_app.state.responses import schemas as wire
from serve_app.state.responses.background import STALE_ERROR, BackgroundRunner, is_stale
from serve_app.state.responses.builder import ResponseBuilder
from serve_app.state.responses.items import items_to_messages, normalize_input
from serve_app.state.responses.turns import Turn, check_stored_size, history_items
from serve_app.state.store import Json, StateStore, StoredResponse, new_id
from serve_app.transport.disconnect import unless_disconnected
from serve_app.transport.framing import SSE_MEDIA_TYPE, SSE_RESPONSE_DOC, sse_event_frame
from serve_app.transport.streaming import stream_frames, streaming_response
from serve_app.transport.unsupported import unsupported_headers


def response_not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _frames(events: list[Json]) -> list[bytes]:
    return [sse_event_frame(event["type"], event) for event in events]


def build_responses_router(
    gateway: Gateway, store: StateStore, settings: StateSettings, runner: BackgroundRunner
) -> APIRouter:
    """The Responses routes over ``gateway`` (generation) and ``store`` (state)."""
    router = APIRouter(prefix="/v1", tags=["responses"])

    async def load(owner: str, response_id: str) -> StoredResponse:
        stored = await store.get_response(owner, response_id)
        if stored is None:
            raise response_not_found(response_id)
        if is_stale(stored, settings):
            await store.close_stale(time.time() - settings.stale_after_s, STALE_ERROR)
            stored = await store.get_response(owner, response_id) or stored
        return stored

    @router.post("/responses", responses=SSE_RESPONSE_DOC)
    async def create_response(body: wire.ResponseCreateRequest, request: Request) -> Response:
        """A model response; streamed as typed SSE events when ``stream`` is true."""
        owner = owner_of(request)
        request_id = request_id_of(request.scope) or ""
        card = gateway.card(body.model)
        if body.background and body.stream:
            raise Unsupported("Streaming a background response is not supported; poll it instead.",
                              param="stream")
        new_items = normalize_input(body.input)
        if len(new_items) > settings.max_input_items:
            raise InvalidRequest(f"At most {settings.max_input_items} input items per response.", param="input")
        check_stored_size(new_items, settings, "The input", "input")
        conversation_id = body.conversation_id
        history = await history_items(store, owner, settings, body.previous_response_id, conversation_id)
        internal = adapter.to_internal(
            body, card.name, request_id, items_to_messages(history, "history"), items_to_messages(new_items)
        )
        gateway.check_generation_supported(card, internal)
        response_id = new_id("resp")
        builder = ResponseBuilder(
            adapter.response_skeleton(body, response_id, conversation_id),
            parallel_tool_calls=body.parallel_tool_calls is not False,
        )
        turn = Turn(
            store=store,
            owner=owner,
            response_id=response_id,
            model=card.name,
            input_items=new_items,
            store_response=body.store is not False,
            previous_response_id=body.previous_response_id,
            conversation_id=conversation_id,
            background=bool(body.background),
            worker=runner.worker,
        )
        headers = unsupported_headers(adapter.unhonoured_fields(body), request_id)
        if body.background:
            queued = await runner.submit(turn, builder, lambda: gateway.start_generation(internal))
            return JSONResponse(queued, headers=headers)
        if not body.stream:
            chunks = await unless_disconnected(request, collect(gateway.start_generation(internal)))
            for chunk in chunks:
                builder.feed(chunk)
            builder.finish()
            await turn.save(builder.response)
            headers.update(timing_headers(context_of(request.scope), streamed=False))
            return JSONResponse(builder.response, headers=headers)

        first, stream = await unless_disconnected(request, gateway.open_stream(internal))
        headers.update(timing_headers(context_of(request.scope), streamed=True))
        started = False

        def frame_batch(batch: Batch) -> list[bytes]:
            nonlocal started
            events = [] if started else builder.start()
            started = True
            for chunk in batch:
                events += builder.feed(chunk)
            return _frames(events)

        async def closing() -> list[bytes]:
            events = [] if started else builder.start()
            events += builder.finish()
            await turn.save(builder.response)  # before the last event: a client may chain at once
            return _frames(events)

        def render_error(error: ServingError) -> bytes:
            if not started:
                return b"".join(_frames(builder.start() + builder.fail(error)))
            return b"".join(_frames(builder.fail(error)))

        body_iter = stream_frames(first, stream, frame_batch, closing, render_error)
        return streaming_response(body_iter, SSE_MEDIA_TYPE, headers)

    @router.get("/responses/{response_id}")
    async def retrieve_response(
        response_id: str, request: Request, include: Annotated[list[str] | None, Query()] = None
    ) -> dict[str, Any]:
        """A stored response (background ones show their current status)."""
        return (await load(owner_of(request), response_id)).body

    @router.delete("/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
        """Delete a stored response."""
        if not await store.delete_response(owner_of(request), response_id):
            raise response_not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @router.get("/responses/{response_id}/input_items")
    async def list_input_items(
        response_id: str,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        include: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        """The response's own input items, paginated."""
        page = await store.input_items(
            owner_of(request), response_id, after=after, limit=limit, order="asc" if order == "asc" else "desc"
        )
        if page is None:
            raise response_not_found(response_id)
        return page.body()

    @router.post("/responses/{response_id}/cancel")
    async def cancel_response(response_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued or running background response."""
        owner = owner_of(request)
        stored = await load(owner, response_id)
        if not stored.background:
            raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
        if stored.status in ("completed", "incomplete", "failed"):
            raise InvalidRequest(f"Cannot cancel a response that is {stored.status}.", param="response_id")
        cancelled = await store.request_cancel(owner, response_id)
        runner.cancel_local(response_id)
        return (cancelled or stored).body

    return router
