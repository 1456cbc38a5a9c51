"""Runs and run steps: create (streamed or in the background), create-thread-and-run, list,
retrieve, modify, cancel, submit tool outputs; steps list and retrieve."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response

from serve_app.core.errors import InvalidRequest
from serve_app.core.gateway import Gateway
from serve_app.edge.limits import Limiter
from serve_app.edge.middleware import context_of, request_id_of
from serve_app.state.assistants import objects
from serve_app.state.assistants import schemas as wire
from serve_app.state.assistants.routes import AssistantsAccess, cursor_of, not_found
from serve_app.state.assistants.runs import STALE_RUN_ERROR, Event, RunExecutor, RunJob
from serve_app.state.assistants.store import ACTIVE_RUN_STATUSES, FINAL_RUN_STATUSES, AssistantsStore, Cursor, StoredRun
from serve_app.state.config import StateSettings
from serve_app.state.owner import owner_of
from serve_app.transport.error_rendering import openai_error_body
from serve_app.transport.framing import SSE_MEDIA_TYPE, SSE_RESPONSE_DOC, sse_event_frame
from serve_app.transport.streaming import as_engine_error, streaming_response
from serve_app.transport.unsupported import unsupported_headers

SSE_DONE_EVENT = b"event: done\ndata: [DONE]\n\n"


def _frames(events: list[Event]) -> bytes:
    return b"".join(sse_event_frame(name, data) for name, data in events)


async def _event_stream(opening: list[Event], executor: RunExecutor, job: RunJob, request_id: str) -> AsyncIterator[bytes]:
    """The SSE body of a streamed run: its events, then ``done`` (a failure of the store in-band).
    A client gone before the run started leaves it cancelled, not queued."""
    events = executor.events(job)
    try:
        yield _frames(opening)
        async for batch in events:
            yield _frames(batch)
        yield SSE_DONE_EVENT
    except Exception as exc:  # noqa: BLE001 - after the first byte every failure goes in-band
        # OpenAI's ErrorEvent: the data is the error object itself (the SDK yields it as an
        # ErrorEvent), not the {"error": ...} envelope of HTTP error bodies.
        yield sse_event_frame("error", openai_error_body(as_engine_error(exc), request_id)["error"])
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        if job.run.status == "queued":
            await executor.abandon(job)


def build_runs_router(
    gateway: Gateway, store: AssistantsStore, settings: StateSettings, executor: RunExecutor, limiter: Limiter
) -> APIRouter:
    """Runs over ``store``, generated through ``gateway`` by ``executor``."""
    router = APIRouter(prefix="/v1", tags=["assistants"])
    access = AssistantsAccess(store)

    async def load_run(owner: str, thread_id: str, run_id: str) -> StoredRun:
        await access.thread(owner, thread_id)
        run = await store.get_run(owner, thread_id, run_id)
        if run is None:
            raise not_found("run", run_id, "run_id")
        if run.status in ACTIVE_RUN_STATUSES:
            now = time.time()
            last = run.heartbeat_at or run.created_at
            expired = run.status == "requires_action" and (run.body.get("expires_at") or now) < now
            if expired or (run.status != "requires_action" and now - last > settings.stale_after_s):
                await store.close_stale_runs(now - settings.stale_after_s, now, STALE_RUN_ERROR, run_id=run_id)
                run = await store.get_run(owner, thread_id, run_id) or run
        return run

    def charger(request: Request) -> Callable[[int], Awaitable[None]] | None:
        """How a background run charges its tokens to the request's key (if it has limits)."""
        ctx = context_of(request.scope)
        key = ctx.key if ctx is not None else None
        if key is None or not key.limits.limited:
            return None
        limits = key.limits
        return lambda tokens: limiter.settle(limits, None, tokens)

    async def start(request: Request, run: StoredRun, stream: bool | None, opening: list[Event],
                    unhonoured: list[str]) -> Response:
        """Hand the queued run to the executor: streamed in this request, or in the background."""
        request_id = request_id_of(request.scope) or ""
        headers = unsupported_headers(unhonoured, request_id)
        job = RunJob(owner=run.owner, run=run, request_id=request_id)
        if stream:
            body = _event_stream(opening, executor, job, request_id)
            return streaming_response(body, SSE_MEDIA_TYPE, headers)
        job.charge = charger(request)
        executor.submit(job)
        return JSONResponse(run.body, headers=headers)

    async def queued_run(owner: str, body: wire._RunFields, thread_id: str,
                         additional_instructions: str | None = None) -> tuple[StoredRun, list[str]]:
        """The new run, checked against its model before anything is stored."""
        assistant = await access.assistant(owner, body.assistant_id)
        run_body = objects.run_object(body, assistant, thread_id)
        card = gateway.card(run_body["model"])
        # What the model cannot do is refused now, not found out by a failed run.
        gateway.check_generation_supported(card, objects.run_request(run_body, [], [], card.name, ""))
        unhonoured = [name for name in wire.UNHONOURED_RUN_FIELDS if getattr(body, name, None) is not None]
        run = StoredRun(id=run_body["id"], owner=owner, thread_id=thread_id, status="queued", body=run_body,
                        transcript=objects.additional_instructions_entry(additional_instructions),
                        worker=executor.worker, heartbeat_at=time.time())
        return run, unhonoured

    @router.post("/threads/{thread_id}/runs", responses=SSE_RESPONSE_DOC)
    async def create_run(thread_id: str, body: wire.RunCreate, request: Request) -> Response:
        """Run an assistant on a thread (``stream``: its events as SSE)."""
        owner = owner_of(request)
        await access.thread(owner, thread_id)
        await access.refuse_if_busy(owner, thread_id)
        run, unhonoured = await queued_run(owner, body, thread_id, body.additional_instructions)
        await access.add_messages(owner, thread_id, body.additional_messages or [], settings, "additional_messages")
        await store.put_run(run)
        opening = [("thread.run.created", run.body), ("thread.run.queued", run.body)]
        return await start(request, run, body.stream, opening, unhonoured)

    @router.post("/threads/runs", responses=SSE_RESPONSE_DOC)
    async def create_thread_and_run(body: wire.ThreadAndRunCreate, request: Request) -> Response:
        """A new thread and a run on it, in one call."""
        owner = owner_of(request)
        objects.check_no_files(body.tool_resources, "tool_resources")
        thread, messages = access.thread_and_messages(body.thread, settings)
        run, unhonoured = await queued_run(owner, body, thread["id"])  # refused before anything is stored
        await access.save_thread(owner, thread, messages)
        await store.put_run(run)
        opening = [("thread.created", thread), ("thread.run.created", run.body), ("thread.run.queued", run.body)]
        return await start(request, run, body.stream, opening, unhonoured)

    @router.get("/threads/{thread_id}/runs")
    async def list_runs(thread_id: str, request: Request, cursor: Annotated[Cursor, Depends(cursor_of)]) -> dict[str, Any]:
        """A thread's runs, paginated."""
        owner = owner_of(request)
        await access.thread(owner, thread_id)
        return (await store.list_runs(owner, thread_id, cursor)).body()

    @router.get("/threads/{thread_id}/runs/{run_id}")
    async def retrieve_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        """One run, with its current status (a run whose replica died is closed first)."""
        return (await load_run(owner_of(request), thread_id, run_id)).body

    @router.post("/threads/{thread_id}/runs/{run_id}")
    async def modify_run(thread_id: str, run_id: str, body: wire.MetadataUpdate, request: Request) -> dict[str, Any]:
        """Change a run's metadata."""
        owner = owner_of(request)
        await load_run(owner, thread_id, run_id)
        changed = await store.set_run_metadata(owner, thread_id, run_id, body.metadata or {})
        if changed is None:
            raise not_found("run", run_id, "run_id")
        return changed.body

    @router.post("/threads/{thread_id}/runs/{run_id}/cancel")
    async def cancel_run(thread_id: str, run_id: str, request: Request) -> dict[str, Any]:
        """Cancel an active run: ``cancelling`` until its replica stops the generation."""
        owner = owner_of(request)
        run = await load_run(owner, thread_id, run_id)
        if run.status in FINAL_RUN_STATUSES:
            raise InvalidRequest(f"Cannot cancel run with status '{run.status}'.", param="run_id")
        cancelled = await store.request_run_cancel(owner, thread_id, run_id) or run
        executor.cancel_local(run_id)
        return cancelled.body

    @router.post("/threads/{thread_id}/runs/{run_id}/submit_tool_outputs", responses=SSE_RESPONSE_DOC)
    async def submit_tool_outputs(thread_id: str, run_id: str, body: wire.SubmitToolOutputs, request: Request) -> Response:
        """The outputs of the calls a run asked for; the run goes on (streamed or not)."""
        owner = owner_of(request)
        run = await load_run(owner, thread_id, run_id)
        if run.status != "requires_action":
            raise InvalidRequest(
                f"Runs in status '{run.status}' do not accept tool outputs.", param="run_id"
            )
        required = run.body["required_action"]["submit_tool_outputs"]["tool_calls"]
        wanted, given = {c["id"] for c in required}, [o.tool_call_id for o in body.tool_outputs]
        if set(given) != wanted or len(given) != len(wanted):
            raise InvalidRequest(
                f"Expected tool outputs for call ids {sorted(wanted)}, got {sorted(given)}.", param="tool_outputs"
            )
        run.transcript = [*run.transcript, *objects.tool_outputs_transcript(body.tool_outputs)]
        run.status = "queued"
        run.body = {**run.body, "status": "queued", "required_action": None}
        run.worker, run.heartbeat_at = executor.worker, time.time()
        # Only the first of two submissions sent together goes on (and never a run that expired
        # or was cancelled meanwhile).
        if not await store.update_run(run, expect=("requires_action",)):
            raise InvalidRequest("The run no longer waits for tool outputs.", param="run_id")
        steps = await store.list_objects("step", owner, Cursor(limit=1, order="desc"), thread_id=thread_id, run_id=run_id)
        opening: list[Event] = []
        if steps.items and steps.items[0]["type"] == "tool_calls":
            step = objects.step_tool_calls_with_outputs(steps.items[0], body.tool_outputs)
            await store.put_object("step", owner, step, thread_id=thread_id, run_id=run_id)
            opening.append(("thread.run.step.completed", step))
        opening.append(("thread.run.queued", run.body))
        return await start(request, run, body.stream, opening, [])

    @router.get("/threads/{thread_id}/runs/{run_id}/steps")
    async def list_run_steps(
        thread_id: str, run_id: str, request: Request, cursor: Annotated[Cursor, Depends(cursor_of)]
    ) -> dict[str, Any]:
        """A run's steps, paginated."""
        owner = owner_of(request)
        await load_run(owner, thread_id, run_id)
        return (await store.list_objects("step", owner, cursor, thread_id=thread_id, run_id=run_id)).body()

    @router.get("/threads/{thread_id}/runs/{run_id}/steps/{step_id}")
    async def retrieve_run_step(thread_id: str, run_id: str, step_id: str, request: Request) -> dict[str, Any]:
        """One run step."""
        owner = owner_of(request)
        await load_run(owner, thread_id, run_id)
        step = await store.get_object("step", owner, step_id, thread_id=thread_id)
        if step is None or step.get("run_id") != run_id:
            raise not_found("run step", step_id, "step_id")
        return step

    return router
