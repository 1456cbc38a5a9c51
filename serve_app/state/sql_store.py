"""The state store on SQLAlchemy's async engine: SQLite (aiosqlite) or PostgreSQL (asyncpg).

Ownership lives in the queries: every statement that reads or changes an object filters on its
owner, so a route cannot forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import and_, delete, event, func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from serve_app.core.errors import StoreUnavailable
from serve_app.state.migrate import upgrade_to_head
from serve_app.state.store import (
    FINAL_STATUSES,
    Json,
    Order,
    Page,
    StoredConversation,
    StoredResponse,
)
from serve_app.state.tables import conversation_items, conversations, responses

logger = logging.getLogger(__name__)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never wait for the writer; foreign keys: deleting a conversation drops its
    # items; a busy timeout instead of "database is locked" when two writers meet.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _response_of(row: Row[Any]) -> StoredResponse:
    return StoredResponse(
        id=row.id,
        owner=row.owner,
        model=row.model,
        status=row.status,
        body=row.body,
        input_items=row.input_items,
        previous_response_id=row.previous_response_id,
        conversation_id=row.conversation_id,
        background=row.background,
        created_at=row.created_at,
        worker=row.worker,
        heartbeat_at=row.heartbeat_at,
        cancel_requested=row.cancel_requested,
    )


def _response_values(response: StoredResponse) -> dict[str, Any]:
    return {
        "id": response.id,
        "owner": response.owner,
        "created_at": response.created_at,
        "model": response.model,
        "status": response.status,
        "background": response.background,
        "previous_response_id": response.previous_response_id,
        "conversation_id": response.conversation_id,
        "body": response.body,
        "input_items": response.input_items,
        "worker": response.worker,
        "heartbeat_at": response.heartbeat_at,
        "cancel_requested": response.cancel_requested,
    }


def _page(items: list[Json], after: str | None, limit: int | None, order: Order) -> Page:
    """A cursor page over ``items`` (oldest first): after ``after``, in ``order``."""
    ordered = items if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    if limit is None:
        return Page(ordered, False)
    return Page(ordered[:limit], len(ordered) > limit)


def store_unavailable(exc: BaseException) -> StoreUnavailable:
    """The database could not be reached or failed: a 503 the client may retry, never a bare 500."""
    logger.error("state store failed: %s: %s", type(exc).__name__, exc)
    return StoreUnavailable("The state store is unavailable; retry shortly.", headers={"retry-after": "5"})


@contextlib.asynccontextmanager
async def _translated(transaction: AbstractAsyncContextManager[AsyncConnection]) -> AsyncIterator[AsyncConnection]:
    try:
        async with transaction as conn:
            yield conn
    except (DBAPIError, OSError) as exc:
        raise store_unavailable(exc) from exc


class SqlStateStore:
    """:class:`serve_app.state.store.StateStore` over one SQLAlchemy async engine."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._echo = echo
        # Connections belong to the event loop that opened them: an app served again on another
        # loop (a test client per test) gets a new engine there.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    def _new_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            # No pool: a pooled aiosqlite connection keeps a (non-daemon) thread alive after its
            # loop ends, and opening an SQLite file costs well under a millisecond.
            engine = create_async_engine(self.url, echo=self._echo, poolclass=NullPool)
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            return engine
        return create_async_engine(self.url, echo=self._echo, pool_size=5, max_overflow=10, pool_pre_ping=True)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._engine = loop, asyncio.Lock(), None
        assert self._lock is not None
        async with self._lock:
            if self._engine is not None:
                return
            engine = self._new_engine()
            async with engine.begin() as connection:
                await connection.run_sync(upgrade_to_head)
            self._engine = engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and self._loop is asyncio.get_running_loop():
            await engine.dispose()

    async def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction on the store's database (connecting first if needed); failures of the
        database surface as :class:`StoreUnavailable`. Other stores over the same database
        (the Assistants API's) open theirs here."""
        if self._engine is None or self._loop is not asyncio.get_running_loop():
            try:
                await self.start()
            except (DBAPIError, OSError) as exc:
                raise store_unavailable(exc) from exc
        assert self._engine is not None
        return _translated(self._engine.begin())

    # -- responses ------------------------------------------------------------------------

    async def save_turn(
        self, owner: str, response: StoredResponse | None, conversation_id: str | None, items: list[Json]
    ) -> None:
        async with await self.begin() as conn:
            if conversation_id is not None:
                found = await conn.execute(
                    select(conversations.c.id).where(
                        and_(conversations.c.id == conversation_id, conversations.c.owner == owner)
                    )
                )
                if found.first() is None:
                    raise LookupError(conversation_id)
                await self._insert_items(conn, owner, conversation_id, items)
            if response is not None:
                await self._upsert_response(conn, response)

    async def put_response(self, response: StoredResponse) -> None:
        async with await self.begin() as conn:
            await self._upsert_response(conn, response)

    async def finish_background(
        self, response: StoredResponse, conversation_id: str | None, items: list[Json]
    ) -> bool:
        async with await self.begin() as conn:
            changed = await conn.execute(
                update(responses)
                .where(
                    and_(
                        responses.c.id == response.id,
                        responses.c.owner == response.owner,
                        responses.c.cancel_requested.is_(False),
                    )
                )
                .values(**_response_values(response))
            )
            if changed.rowcount == 0:
                return False
            if conversation_id is not None:
                await self._insert_items(conn, response.owner, conversation_id, items)
        return True

    @staticmethod
    async def _upsert_response(conn: AsyncConnection, response: StoredResponse) -> None:
        values = _response_values(response)
        changed = await conn.execute(
            update(responses)
            .where(and_(responses.c.id == response.id, responses.c.owner == response.owner))
            .values(**values)
        )
        if changed.rowcount == 0:
            await conn.execute(insert(responses).values(**values))

    async def get_response(self, owner: str, response_id: str) -> StoredResponse | None:
        async with await self.begin() as conn:
            row = (
                await conn.execute(
                    select(responses).where(and_(responses.c.id == response_id, responses.c.owner == owner))
                )
            ).first()
        return None if row is None else _response_of(row)

    async def delete_response(self, owner: str, response_id: str) -> bool:
        async with await self.begin() as conn:
            result = await conn.execute(
                delete(responses).where(and_(responses.c.id == response_id, responses.c.owner == owner))
            )
        return result.rowcount > 0

    async def response_chain(self, owner: str, response_id: str, max_depth: int) -> list[StoredResponse]:
        chain: list[StoredResponse] = []
        next_id: str | None = response_id
        async with await self.begin() as conn:
            while next_id is not None:
                if len(chain) >= max_depth:
                    raise ValueError(f"the previous_response_id chain is longer than {max_depth} responses")
                row = (
                    await conn.execute(
                        select(responses).where(and_(responses.c.id == next_id, responses.c.owner == owner))
                    )
                ).first()
                if row is None:
                    raise LookupError(next_id)
                stored = _response_of(row)
                chain.append(stored)
                next_id = stored.previous_response_id
        chain.reverse()
        return chain

    async def input_items(
        self, owner: str, response_id: str, *, after: str | None, limit: int, order: Order
    ) -> Page | None:
        stored = await self.get_response(owner, response_id)
        if stored is None:
            return None
        return _page(stored.input_items, after, limit, order)

    async def heartbeat(self, owner: str, response_id: str, worker: str) -> bool:
        async with await self.begin() as conn:
            result = await conn.execute(
                update(responses)
                .where(
                    and_(
                        responses.c.id == response_id,
                        responses.c.owner == owner,
                        responses.c.worker == worker,
                        responses.c.cancel_requested.is_(False),
                        responses.c.status.not_in(FINAL_STATUSES),
                    )
                )
                .values(heartbeat_at=time.time())
            )
        return result.rowcount > 0

    async def request_cancel(self, owner: str, response_id: str) -> StoredResponse | None:
        async with await self.begin() as conn:
            row = (
                await conn.execute(
                    select(responses).where(and_(responses.c.id == response_id, responses.c.owner == owner))
                )
            ).first()
            if row is None:
                return None
            stored = _response_of(row)
            if stored.status in FINAL_STATUSES:
                return stored
            stored.status = "cancelled"
            stored.cancel_requested = True
            stored.body = {**stored.body, "status": "cancelled"}
            await conn.execute(
                update(responses)
                .where(responses.c.id == response_id)
                .values(status="cancelled", cancel_requested=True, body=stored.body)
            )
        return stored

    async def close_stale(self, older_than: float, error: Json) -> int:
        async with await self.begin() as conn:
            rows = (
                await conn.execute(
                    select(responses).where(
                        and_(
                            responses.c.background.is_(True),
                            responses.c.status.in_(("queued", "in_progress")),
                            func.coalesce(responses.c.heartbeat_at, responses.c.created_at) < older_than,
                        )
                    )
                )
            ).all()
            for row in rows:
                body = {**row.body, "status": "failed", "error": error}
                await conn.execute(
                    update(responses)
                    .where(and_(responses.c.id == row.id, responses.c.status.in_(("queued", "in_progress"))))
                    .values(status="failed", body=body)
                )
        return len(rows)

    # -- conversations --------------------------------------------------------------------

    @staticmethod
    async def _insert_items(conn: AsyncConnection, owner: str, conversation_id: str, items: list[Json]) -> None:
        if not items:
            return
        now = time.time()
        await conn.execute(
            insert(conversation_items),
            [
                {"id": item["id"], "conversation_id": conversation_id, "owner": owner, "created_at": now, "item": item}
                for item in items
            ],
        )

    async def create_conversation(self, conversation: StoredConversation, items: list[Json]) -> None:
        async with await self.begin() as conn:
            await conn.execute(
                insert(conversations).values(
                    id=conversation.id,
                    owner=conversation.owner,
                    created_at=conversation.created_at,
                    metadata_json=conversation.metadata,
                )
            )
            await self._insert_items(conn, conversation.owner, conversation.id, items)

    async def get_conversation(self, owner: str, conversation_id: str) -> StoredConversation | None:
        async with await self.begin() as conn:
            row = (
                await conn.execute(
                    select(conversations).where(
                        and_(conversations.c.id == conversation_id, conversations.c.owner == owner)
                    )
                )
            ).first()
        if row is None:
            return None
        return StoredConversation(id=row.id, owner=row.owner, metadata=row.metadata_json, created_at=row.created_at)

    async def update_conversation(
        self, owner: str, conversation_id: str, metadata: dict[str, str]
    ) -> StoredConversation | None:
        async with await self.begin() as conn:
            result = await conn.execute(
                update(conversations)
                .where(and_(conversations.c.id == conversation_id, conversations.c.owner == owner))
                .values(metadata_json=metadata)
            )
        if result.rowcount == 0:
            return None
        return await self.get_conversation(owner, conversation_id)

    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        async with await self.begin() as conn:
            await conn.execute(
                delete(conversation_items).where(
                    and_(conversation_items.c.conversation_id == conversation_id, conversation_items.c.owner == owner)
                )
            )
            result = await conn.execute(
                delete(conversations).where(and_(conversations.c.id == conversation_id, conversations.c.owner == owner))
            )
        return result.rowcount > 0

    async def add_items(self, owner: str, conversation_id: str, items: list[Json]) -> bool:
        async with await self.begin() as conn:
            found = await conn.execute(
                select(conversations.c.id).where(
                    and_(conversations.c.id == conversation_id, conversations.c.owner == owner)
                )
            )
            if found.first() is None:
                return False
            await self._insert_items(conn, owner, conversation_id, items)
        return True

    async def list_items(
        self, owner: str, conversation_id: str, *, after: str | None, limit: int | None, order: Order
    ) -> Page | None:
        async with await self.begin() as conn:
            found = await conn.execute(
                select(conversations.c.id).where(
                    and_(conversations.c.id == conversation_id, conversations.c.owner == owner)
                )
            )
            if found.first() is None:
                return None
            query = select(conversation_items.c.seq, conversation_items.c.item).where(
                and_(conversation_items.c.conversation_id == conversation_id, conversation_items.c.owner == owner)
            )
            if after is not None:
                cursor = (
                    await conn.execute(
                        select(conversation_items.c.seq).where(
                            and_(
                                conversation_items.c.id == after,
                                conversation_items.c.conversation_id == conversation_id,
                            )
                        )
                    )
                ).first()
                if cursor is None:
                    return Page([], False)
                query = query.where(
                    conversation_items.c.seq > cursor.seq if order == "asc" else conversation_items.c.seq < cursor.seq
                )
            query = query.order_by(conversation_items.c.seq.asc() if order == "asc" else conversation_items.c.seq.desc())
            if limit is not None:
                query = query.limit(limit + 1)
            rows = (await conn.execute(query)).all()
        items = [row.item for row in rows]
        if limit is not None and len(items) > limit:
            return Page(items[:limit], True)
        return Page(items, False)

    async def get_item(self, owner: str, conversation_id: str, item_id: str) -> Json | None:
        async with await self.begin() as conn:
            row = (
                await conn.execute(
                    select(conversation_items.c.item).where(
                        and_(
                            conversation_items.c.id == item_id,
                            conversation_items.c.conversation_id == conversation_id,
                            conversation_items.c.owner == owner,
                        )
                    )
                )
            ).first()
        return None if row is None else row.item

    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        async with await self.begin() as conn:
            result = await conn.execute(
                delete(conversation_items).where(
                    and_(
                        conversation_items.c.id == item_id,
                        conversation_items.c.conversation_id == conversation_id,
                        conversation_items.c.owner == owner,
                    )
                )
            )
        return result.rowcount > 0

    # -- housekeeping ---------------------------------------------------------------------

    async def purge_older_than(self, cutoff: float) -> int:
        async with await self.begin() as conn:
            gone = await conn.execute(delete(responses).where(responses.c.created_at < cutoff))
            old = select(conversations.c.id).where(conversations.c.created_at < cutoff)
            await conn.execute(delete(conversation_items).where(conversation_items.c.conversation_id.in_(old)))
            gone_conversations = await conn.execute(delete(conversations).where(conversations.c.created_at < cutoff))
        return gone.rowcount + gone_conversations.rowcount
