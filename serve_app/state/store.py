"""The state store's protocol and records: what the stateful routes need, not how it is kept.

Records hold wire-shaped JSON (items and response objects exactly as the API shows them), so the
store never needs to know the API's types. Every call takes the ``owner`` (the API key's name,
``""`` when the server has no keys): an object another owner created is reported as absent.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Json = dict[str, Any]
Order = Literal["asc", "desc"]
# queued / in_progress only for background responses; the rest are final.
ResponseStatus = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})


def new_id(prefix: str) -> str:
    """An object id in OpenAI's style: ``resp_``, ``conv_``, ``msg_``, ``fc_``... then hex."""
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(slots=True)
class StoredResponse:
    """One stored response: its object as last rendered, and the items of its turn."""

    id: str
    owner: str
    model: str
    status: str
    body: Json  # the ``response`` object
    input_items: list[Json]  # the turn's own input (not the history it was given)
    previous_response_id: str | None = None
    conversation_id: str | None = None
    background: bool = False
    created_at: float = field(default_factory=time.time)
    worker: str | None = None  # the replica running a background response
    heartbeat_at: float | None = None
    cancel_requested: bool = False

    @property
    def output_items(self) -> list[Json]:
        return list(self.body.get("output") or [])


@dataclass(slots=True)
class StoredConversation:
    id: str
    owner: str
    metadata: dict[str, str]
    created_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Page:
    """One page of a list, in OpenAI's cursor style."""

    items: list[Json]
    has_more: bool

    def body(self) -> Json:
        """The ``list`` object the API returns for this page."""
        return {
            "object": "list",
            "data": self.items,
            "first_id": self.items[0]["id"] if self.items else None,
            "last_id": self.items[-1]["id"] if self.items else None,
            "has_more": self.has_more,
        }


@runtime_checkable
class StateStore(Protocol):
    """Where responses and conversations are kept; shared by every ingress replica."""

    async def start(self) -> None:
        """Connect and bring the schema to the current version (idempotent)."""
        ...

    async def close(self) -> None:
        """Release the connections."""
        ...

    # -- responses ------------------------------------------------------------------------

    async def save_turn(
        self, owner: str, response: StoredResponse | None, conversation_id: str | None, items: list[Json]
    ) -> None:
        """Store a finished turn at once: the response (unless ``store: false``) and, for a
        conversation, its input and output items appended in order. Raises ``LookupError`` if
        the conversation is gone."""
        ...

    async def put_response(self, response: StoredResponse) -> None:
        """Insert or replace a response (background responses are written as they progress)."""
        ...

    async def finish_background(
        self, response: StoredResponse, conversation_id: str | None, items: list[Json]
    ) -> bool:
        """Write a background response's final state (and its conversation items) unless it was
        cancelled meanwhile; False if it was."""
        ...

    async def get_response(self, owner: str, response_id: str) -> StoredResponse | None:
        ...

    async def delete_response(self, owner: str, response_id: str) -> bool:
        ...

    async def response_chain(self, owner: str, response_id: str, max_depth: int) -> list[StoredResponse]:
        """The response and every earlier one it continues, oldest first. Raises ``LookupError``
        naming the first missing id; ``ValueError`` if the chain is longer than ``max_depth``."""
        ...

    async def input_items(
        self, owner: str, response_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page | None:
        """A page of the response's input items (``None`` if the response is not found)."""
        ...

    async def heartbeat(self, owner: str, response_id: str, worker: str) -> bool:
        """Note that ``worker`` still runs the response; False once it was cancelled or closed."""
        ...

    async def request_cancel(self, owner: str, response_id: str) -> StoredResponse | None:
        """Mark a queued or running background response cancelled; the stored one after."""
        ...

    async def close_stale(self, older_than: float, error: Json) -> int:
        """Fail background responses whose replica stopped saying it runs them."""
        ...

    # -- conversations --------------------------------------------------------------------

    async def create_conversation(self, conversation: StoredConversation, items: list[Json]) -> None:
        ...

    async def get_conversation(self, owner: str, conversation_id: str) -> StoredConversation | None:
        ...

    async def update_conversation(
        self, owner: str, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        ...

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        ...

    async def add_items(self, owner: str, conversation_id: str, items: list[Json]) -> bool:
        """Append items; False if the conversation is not found."""
        ...

    async def list_items(
        self, owner: str, conversation_id: str, *, after: str | None, limit: int | None, order: Order
    ) -> Page | None:
        """A page of the conversation's items (all of them with ``limit`` None)."""
        ...

    async def get_item(self, owner: str, conversation_id: str, item_id: str) -> Json | None:
        ...

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        ...

    # -- housekeeping ---------------------------------------------------------------------

    async def purge_older_than(self, cutoff: float) -> int:
        """Delete responses and conversations created before ``cutoff``; how many went."""
        ...
