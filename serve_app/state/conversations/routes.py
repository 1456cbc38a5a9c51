"""``/v1/conversations``: create, read, update and delete conversations and their items."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.errors import NotFound
from serve_app.state.config import StateSettings
from serve_app.state.owner import owner_of
from serve_app.state.responses import schemas as wire
from serve_app.state.responses.items import items_to_messages, normalize_input
from serve_app.state.responses.turns import check_stored_size, conversation_not_found
from serve_app.state.store import Json, StateStore, StoredConversation, new_id

# OpenAI's own bound on the items one create or append call may carry.
MAX_ITEMS_PER_CALL = 20


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[wire.InputItem], Field(max_length=MAX_ITEMS_PER_CALL)] | None = None
    metadata: wire.Metadata | None = None


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: wire.Metadata


class ItemsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[wire.InputItem], Field(min_length=1, max_length=MAX_ITEMS_PER_CALL)]


def conversation_body(conversation: StoredConversation) -> Json:
    """The ``conversation`` object."""
    return {
        "id": conversation.id,
        "object": "conversation",
        "created_at": int(conversation.created_at),
        "metadata": conversation.metadata,
    }


def _items(items: list[Any], settings: StateSettings) -> list[Json]:
    normalized = normalize_input(items, "items")
    items_to_messages(normalized, "items")  # what a later response could not replay is refused now
    check_stored_size(normalized, settings, "The items", "items")
    return normalized


def build_conversations_router(store: StateStore, settings: StateSettings) -> APIRouter:
    """The Conversations routes over ``store``."""
    router = APIRouter(prefix="/v1/conversations", tags=["conversations"])

    async def load(owner: str, conversation_id: str) -> StoredConversation:
        conversation = await store.get_conversation(owner, conversation_id)
        if conversation is None:
            raise conversation_not_found(conversation_id, param="conversation_id")
        return conversation

    @router.post("")
    async def create_conversation(body: ConversationCreate, request: Request) -> dict[str, Any]:
        """A new conversation, optionally with its first items."""
        items = _items(body.items or [], settings)
        conversation = StoredConversation(id=new_id("conv"), owner=owner_of(request), metadata=body.metadata or {})
        await store.create_conversation(conversation, items)
        return conversation_body(conversation)

    @router.get("/{conversation_id}")
    async def retrieve_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
        """One conversation."""
        return conversation_body(await load(owner_of(request), conversation_id))

    @router.post("/{conversation_id}")
    async def update_conversation(conversation_id: str, body: ConversationUpdate, request: Request) -> dict[str, Any]:
        """Replace a conversation's metadata."""
        updated = await store.update_conversation(owner_of(request), conversation_id, body.metadata)
        if updated is None:
            raise conversation_not_found(conversation_id, param="conversation_id")
        return conversation_body(updated)

    @router.delete("/{conversation_id}")
    async def delete_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
        """Delete a conversation and its items."""
        if not await store.delete_conversation(owner_of(request), conversation_id):
            raise conversation_not_found(conversation_id, param="conversation_id")
        return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}

    @router.get("/{conversation_id}/items")
    async def list_items(
        conversation_id: str,
        request: Request,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        include: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        """The conversation's items, paginated (newest first by default)."""
        page = await store.list_items(
            owner_of(request), conversation_id, after=after, limit=limit, order="asc" if order == "asc" else "desc"
        )
        if page is None:
            raise conversation_not_found(conversation_id, param="conversation_id")
        return page.body()

    @router.post("/{conversation_id}/items")
    async def create_items(
        conversation_id: str,
        body: ItemsCreate,
        request: Request,
        include: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        """Append items to the conversation."""
        items = _items(body.items, settings)
        if not await store.add_items(owner_of(request), conversation_id, items):
            raise conversation_not_found(conversation_id, param="conversation_id")
        return {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"],
            "last_id": items[-1]["id"],
            "has_more": False,
        }

    @router.get("/{conversation_id}/items/{item_id}")
    async def retrieve_item(conversation_id: str, item_id: str, request: Request) -> dict[str, Any]:
        """One item of the conversation."""
        owner = owner_of(request)
        item = await store.get_item(owner, conversation_id, item_id)
        if item is None:
            await load(owner, conversation_id)
            raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
        return item

    @router.delete("/{conversation_id}/items/{item_id}")
    async def delete_item(conversation_id: str, item_id: str, request: Request) -> dict[str, Any]:
        """Delete one item; returns the conversation."""
        owner = owner_of(request)
        conversation = await load(owner, conversation_id)
        if not await store.delete_item(owner, conversation_id, item_id):
            raise NotFound(f"Item with id '{item_id}' not found.", param="item_id")
        return conversation_body(conversation)

    return router
