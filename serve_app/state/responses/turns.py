"""What one turn reads from the store before it runs, and writes after.

The history a turn continues is rebuilt from stored items (a ``previous_response_id`` chain, or
a conversation's items); the finished turn is written in one transaction: the response, unless
``store: false``, and, for a conversation, its input and output appended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from serve_app.core.errors import InvalidRequest, NotFound, PayloadTooLarge
from serve_app.state.config import StateSettings
from serve_app.state.store import Json, StateStore, StoredResponse


def json_size(value: object) -> int:
    """Bytes ``value`` takes as stored JSON."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def check_stored_size(value: object, settings: StateSettings, what: str, param: str | None) -> None:
    """413 when ``value`` is larger than the store accepts."""
    size = json_size(value)
    if size > settings.max_stored_bytes:
        raise PayloadTooLarge(
            f"{what} takes {size} bytes; the server stores at most {settings.max_stored_bytes}.", param=param
        )


def conversation_not_found(conversation_id: str, param: str | None = "conversation") -> NotFound:
    return NotFound(f"Conversation with id '{conversation_id}' not found.", param=param,
                    code="conversation_not_found")


async def history_items(
    store: StateStore,
    owner: str,
    settings: StateSettings,
    previous_response_id: str | None,
    conversation_id: str | None,
) -> list[Json]:
    """The items of every earlier turn, oldest first."""
    if previous_response_id is not None:
        try:
            chain = await store.response_chain(owner, previous_response_id, settings.max_history_depth)
        except LookupError as exc:
            raise NotFound(f"Previous response with id '{exc.args[0]}' not found.", param="previous_response_id",
                           code="previous_response_not_found") from None
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="previous_response_id") from None
        items: list[Json] = []
        for earlier in chain:
            if earlier.status in ("queued", "in_progress"):
                raise InvalidRequest(f"Response '{earlier.id}' is still {earlier.status}.",
                                     param="previous_response_id")
            items += earlier.input_items + earlier.output_items
        return items
    if conversation_id is not None:
        page = await store.list_items(owner, conversation_id, after=None, limit=None, order="asc")
        if page is None:
            raise conversation_not_found(conversation_id)
        return page.items
    return []


@dataclass(slots=True)
class Turn:
    """One response's place in the store: who owns it, what it continues, what it adds."""

    store: StateStore
    owner: str
    response_id: str
    model: str
    input_items: list[Json]
    store_response: bool
    previous_response_id: str | None
    conversation_id: str | None
    background: bool = False
    worker: str | None = None  # the replica that ran it (operators' question: which one?)

    def record(self, body: Json, worker: str | None = None) -> StoredResponse:
        """The stored form of the response ``body``."""
        return StoredResponse(
            id=self.response_id,
            owner=self.owner,
            model=self.model,
            status=body["status"],
            body=body,
            input_items=self.input_items,
            previous_response_id=self.previous_response_id,
            conversation_id=self.conversation_id,
            background=self.background,
            worker=worker or self.worker,
        )

    def conversation_items(self, body: Json) -> list[Json]:
        return self.input_items + list(body.get("output") or []) if self.conversation_id else []

    async def save(self, body: Json) -> None:
        """Write the finished turn (nothing at all with ``store: false`` and no conversation)."""
        record = self.record(body) if self.store_response else None
        if record is None and self.conversation_id is None:
            return
        try:
            await self.store.save_turn(self.owner, record, self.conversation_id, self.conversation_items(body))
        except LookupError:
            raise conversation_not_found(self.conversation_id or "") from None
