"""``/v1/assistants`` and ``/v1/threads`` (with their messages): create, list, read, modify, delete.

Runs and run steps are in :mod:`serve_app.state.assistants.run_routes`. ``OpenAI-Beta:
assistants=v2`` is accepted (and not required).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from serve_app.core.errors import InvalidRequest, NotFound
from serve_app.core.gateway import Gateway
from serve_app.state.assistants import objects
from serve_app.state.assistants import schemas as wire
from serve_app.state.assistants.store import ACTIVE_RUN_STATUSES, AssistantsStore, Cursor
from serve_app.state.config import StateSettings
from serve_app.state.owner import owner_of
from serve_app.state.responses.turns import check_stored_size
from serve_app.state.store import Json


def cursor_of(
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Cursor:
    """OpenAI's list parameters as one :class:`Cursor`."""
    return Cursor(limit=limit, order="asc" if order == "asc" else "desc", after=after, before=before)


def not_found(kind: str, object_id: str, param: str) -> NotFound:
    return NotFound(f"No {kind} found with id '{object_id}'.", param=param)


class AssistantsAccess:
    """Reads that every Assistants route shares, each a 404 in OpenAI's shape when absent."""

    def __init__(self, store: AssistantsStore) -> None:
        self.store = store

    async def assistant(self, owner: str, assistant_id: str) -> Json:
        found = await self.store.get_object("assistant", owner, assistant_id)
        if found is None:
            raise not_found("assistant", assistant_id, "assistant_id")
        return found

    async def thread(self, owner: str, thread_id: str) -> Json:
        found = await self.store.get_object("thread", owner, thread_id)
        if found is None:
            raise not_found("thread", thread_id, "thread_id")
        return found

    async def message(self, owner: str, thread_id: str, message_id: str) -> Json:
        found = await self.store.get_object("message", owner, message_id, thread_id=thread_id)
        if found is None:
            raise not_found("message", message_id, "message_id")
        return found

    async def refuse_if_busy(self, owner: str, thread_id: str) -> None:
        """400 while a run of the thread is active (OpenAI's rule for new messages and runs)."""
        latest = await self.store.list_runs(owner, thread_id, Cursor(limit=1, order="desc"))
        if latest.items and latest.items[0]["status"] in ACTIVE_RUN_STATUSES:
            raise InvalidRequest(
                f"Thread {thread_id} already has an active run {latest.items[0]['id']}.", param="thread_id"
            )

    async def add_messages(self, owner: str, thread_id: str, messages: list[wire.MessageCreate],
                           settings: StateSettings, param: str) -> list[Json]:
        stored = [objects.message_object(m, thread_id, f"{param}[{i}].content") for i, m in enumerate(messages)]
        check_stored_size(stored, settings, "The messages", param)
        for message in stored:
            await self.store.put_object("message", owner, message, thread_id=thread_id)
        return stored

    @staticmethod
    def thread_and_messages(body: wire.ThreadCreate | None, settings: StateSettings) -> tuple[Json, list[Json]]:
        """A new thread and its first messages, checked (nothing stored yet)."""
        body = body or wire.ThreadCreate()
        objects.check_no_files(body.tool_resources, "tool_resources")
        thread = objects.thread_object(body.metadata)
        messages = [objects.message_object(m, thread["id"], f"messages[{i}].content")
                    for i, m in enumerate(body.messages or [])]
        check_stored_size(messages, settings, "The messages", "messages")
        return thread, messages

    async def save_thread(self, owner: str, thread: Json, messages: list[Json]) -> None:
        await self.store.put_object("thread", owner, thread)
        for message in messages:
            await self.store.put_object("message", owner, message, thread_id=thread["id"])

    async def new_thread(self, owner: str, body: wire.ThreadCreate | None, settings: StateSettings) -> Json:
        thread, messages = self.thread_and_messages(body, settings)
        await self.save_thread(owner, thread, messages)
        return thread


def build_assistants_router(
    gateway: Gateway, store: AssistantsStore, settings: StateSettings, cancel_local: Callable[[str], None]
) -> APIRouter:
    """Assistants, threads and messages over ``store``; ``cancel_local`` stops a run this replica
    runs (a deleted thread's)."""
    router = APIRouter(prefix="/v1", tags=["assistants"])
    access = AssistantsAccess(store)

    # -- assistants -----------------------------------------------------------------------

    @router.post("/assistants")
    async def create_assistant(body: wire.AssistantCreate, request: Request) -> dict[str, Any]:
        """A new assistant (its model must be one this server serves)."""
        gateway.card(body.model)
        assistant = objects.assistant_object(body)
        check_stored_size(assistant, settings, "The assistant", None)
        await store.put_object("assistant", owner_of(request), assistant)
        return assistant

    @router.get("/assistants")
    async def list_assistants(request: Request, cursor: Annotated[Cursor, Depends(cursor_of)]) -> dict[str, Any]:
        """The key's assistants, paginated."""
        return (await store.list_objects("assistant", owner_of(request), cursor)).body()

    @router.get("/assistants/{assistant_id}")
    async def retrieve_assistant(assistant_id: str, request: Request) -> dict[str, Any]:
        """One assistant."""
        return await access.assistant(owner_of(request), assistant_id)

    @router.post("/assistants/{assistant_id}")
    async def modify_assistant(assistant_id: str, body: wire.AssistantUpdate, request: Request) -> dict[str, Any]:
        """Change an assistant's fields (those sent)."""
        owner = owner_of(request)
        if "model" in body.model_fields_set:
            if body.model is None:
                raise InvalidRequest("'model' cannot be null.", param="model")
            gateway.card(body.model)
        assistant = objects.updated_assistant(await access.assistant(owner, assistant_id), body)
        check_stored_size(assistant, settings, "The assistant", None)
        await store.put_object("assistant", owner, assistant)
        return assistant

    @router.delete("/assistants/{assistant_id}")
    async def delete_assistant(assistant_id: str, request: Request) -> dict[str, Any]:
        """Delete an assistant (its past runs keep what they were given)."""
        if not await store.delete_object("assistant", owner_of(request), assistant_id):
            raise not_found("assistant", assistant_id, "assistant_id")
        return objects.deleted(assistant_id, "assistant")

    # -- threads --------------------------------------------------------------------------

    @router.post("/threads")
    async def create_thread(request: Request, body: wire.ThreadCreate | None = None) -> dict[str, Any]:
        """A new thread, optionally with its first messages."""
        return await access.new_thread(owner_of(request), body, settings)

    @router.get("/threads/{thread_id}")
    async def retrieve_thread(thread_id: str, request: Request) -> dict[str, Any]:
        """One thread."""
        return await access.thread(owner_of(request), thread_id)

    @router.post("/threads/{thread_id}")
    async def modify_thread(thread_id: str, body: wire.ThreadUpdate, request: Request) -> dict[str, Any]:
        """Change a thread's metadata."""
        owner = owner_of(request)
        objects.check_no_files(body.tool_resources, "tool_resources")
        thread = await access.thread(owner, thread_id)
        if "metadata" in body.model_fields_set:
            thread = {**thread, "metadata": body.metadata or {}}
            await store.put_object("thread", owner, thread)
        return thread

    @router.delete("/threads/{thread_id}")
    async def delete_thread(thread_id: str, request: Request) -> dict[str, Any]:
        """Delete a thread with its messages, runs and run steps (an active run is cancelled
        first, so that nothing writes into the thread after it is gone)."""
        owner = owner_of(request)
        latest = await store.list_runs(owner, thread_id, Cursor(limit=1, order="desc"))
        for run in latest.items:
            if run["status"] in ACTIVE_RUN_STATUSES:
                await store.request_run_cancel(owner, thread_id, run["id"])
                cancel_local(run["id"])
        if not await store.delete_object("thread", owner, thread_id):
            raise not_found("thread", thread_id, "thread_id")
        return objects.deleted(thread_id, "thread")

    # -- messages -------------------------------------------------------------------------

    @router.post("/threads/{thread_id}/messages")
    async def create_message(thread_id: str, body: wire.MessageCreate, request: Request) -> dict[str, Any]:
        """Add a message to a thread (not while one of its runs is active)."""
        owner = owner_of(request)
        await access.thread(owner, thread_id)
        await access.refuse_if_busy(owner, thread_id)
        [message] = await access.add_messages(owner, thread_id, [body], settings, "content")
        return message

    @router.get("/threads/{thread_id}/messages")
    async def list_messages(
        thread_id: str, request: Request, cursor: Annotated[Cursor, Depends(cursor_of)], run_id: str | None = None
    ) -> dict[str, Any]:
        """A thread's messages, paginated (``run_id``: those one run wrote)."""
        owner = owner_of(request)
        await access.thread(owner, thread_id)
        return (await store.list_objects("message", owner, cursor, thread_id=thread_id, run_id=run_id)).body()

    @router.get("/threads/{thread_id}/messages/{message_id}")
    async def retrieve_message(thread_id: str, message_id: str, request: Request) -> dict[str, Any]:
        """One message."""
        return await access.message(owner_of(request), thread_id, message_id)

    @router.post("/threads/{thread_id}/messages/{message_id}")
    async def modify_message(thread_id: str, message_id: str, body: wire.MetadataUpdate, request: Request) -> dict[str, Any]:
        """Change a message's metadata."""
        owner = owner_of(request)
        message = {**await access.message(owner, thread_id, message_id), "metadata": body.metadata or {}}
        await store.put_object("message", owner, message, thread_id=thread_id)
        return message

    @router.delete("/threads/{thread_id}/messages/{message_id}")
    async def delete_message(thread_id: str, message_id: str, request: Request) -> dict[str, Any]:
        """Delete a message."""
        if not await store.delete_object("message", owner_of(request), message_id, thread_id=thread_id):
            raise not_found("message", message_id, "message_id")
        return objects.deleted(message_id, "thread.message")

    return router
