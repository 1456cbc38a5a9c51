"""The state store on both databases: the migrated schema, ownership, chains, pages, housekeeping.

PostgreSQL is a real server these tests start (tests/postgres.py), never a mock.
"""

from __future__ import annotations

import time

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from serve_app.state.config import StateSettings
from serve_app.state.maintenance import sweep_once
from serve_app.state.migrate import current_revision, head_revision
from serve_app.state.responses.background import STALE_ERROR
from serve_app.state.sql_store import SqlStateStore
from serve_app.state.store import StoredConversation, StoredResponse
from serve_app.state.tables import metadata


def response(rid: str, owner: str = "alice", previous: str | None = None, **fields: object) -> StoredResponse:
    return StoredResponse(
        id=rid, owner=owner, model="m", status=str(fields.pop("status", "completed")),
        body={"id": rid, "output": [{"id": f"out-{rid}", "type": "message"}]},
        input_items=[{"id": f"in-{rid}", "type": "message"}], previous_response_id=previous, **fields,  # type: ignore[arg-type]
    )


async def test_migrations_build_exactly_the_declared_tables(store: SqlStateStore) -> None:
    engine = store._engine
    assert engine is not None
    async with engine.connect() as conn:
        diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
        assert diff == []
        assert await conn.run_sync(current_revision) == head_revision()


async def test_start_is_idempotent_and_data_survives_a_restart(store: SqlStateStore) -> None:
    await store.save_turn("alice", response("resp_a"), None, [])
    again = SqlStateStore(store.url)
    await again.start()
    assert (await again.get_response("alice", "resp_a")) is not None
    await again.close()


async def test_every_query_is_scoped_to_its_owner(store: SqlStateStore) -> None:
    await store.save_turn("alice", response("resp_a"), None, [])
    await store.create_conversation(StoredConversation("conv_a", "alice", {}), [{"id": "i1"}])
    assert await store.get_response("bob", "resp_a") is None
    assert not await store.delete_response("bob", "resp_a")
    assert await store.input_items("bob", "resp_a", after=None, limit=5, order="asc") is None
    with pytest.raises(LookupError):
        await store.response_chain("bob", "resp_a", 10)
    assert await store.get_conversation("bob", "conv_a") is None
    assert await store.list_items("bob", "conv_a", after=None, limit=None, order="asc") is None
    assert not await store.add_items("bob", "conv_a", [{"id": "i2"}])
    assert await store.get_item("bob", "conv_a", "i1") is None
    assert not await store.delete_item("bob", "conv_a", "i1")
    assert not await store.delete_conversation("bob", "conv_a")
    with pytest.raises(LookupError):
        await store.save_turn("bob", None, "conv_a", [{"id": "i3"}])
    assert await store.get_response("alice", "resp_a") is not None
    page = await store.list_items("alice", "conv_a", after=None, limit=None, order="asc")
    assert page is not None and [i["id"] for i in page.items] == ["i1"]


async def test_chains_come_back_oldest_first_and_are_bounded(store: SqlStateStore) -> None:
    previous = None
    for i in range(4):
        await store.put_response(response(f"resp_{i}", previous=previous))
        previous = f"resp_{i}"
    chain = await store.response_chain("alice", "resp_3", 10)
    assert [r.id for r in chain] == ["resp_0", "resp_1", "resp_2", "resp_3"]
    with pytest.raises(ValueError):
        await store.response_chain("alice", "resp_3", 3)
    await store.delete_response("alice", "resp_1")
    with pytest.raises(LookupError) as info:
        await store.response_chain("alice", "resp_3", 10)
    assert info.value.args == ("resp_1",)


async def test_conversation_items_keep_their_order_and_pages(store: SqlStateStore) -> None:
    await store.create_conversation(StoredConversation("conv_p", "alice", {"k": "v"}), [])
    for i in range(5):
        await store.add_items("alice", "conv_p", [{"id": f"i{i}"}])
    page = await store.list_items("alice", "conv_p", after="i1", limit=2, order="asc")
    assert page is not None and [i["id"] for i in page.items] == ["i2", "i3"] and page.has_more
    page = await store.list_items("alice", "conv_p", after="i1", limit=2, order="desc")
    assert page is not None and [i["id"] for i in page.items] == ["i0"] and not page.has_more
    assert (await store.update_conversation("alice", "conv_p", {"k": "w"})).metadata == {"k": "w"}  # type: ignore[union-attr]
    assert await store.delete_conversation("alice", "conv_p")
    assert await store.get_item("alice", "conv_p", "i0") is None


async def test_retention_deletes_only_old_objects(store: SqlStateStore) -> None:
    now = time.time()
    await store.put_response(response("resp_old", created_at=now - 10 * 86400))
    await store.put_response(response("resp_new", created_at=now))
    await store.create_conversation(StoredConversation("conv_old", "alice", {}, created_at=now - 10 * 86400),
                                    [{"id": "x"}])
    purged, _ = await sweep_once(store, StateSettings(retention_days=7), now=now)
    assert purged == 2
    assert await store.get_response("alice", "resp_old") is None
    assert await store.get_response("alice", "resp_new") is not None
    assert await store.get_conversation("alice", "conv_old") is None


async def test_background_rows_heartbeat_cancel_and_go_stale(store: SqlStateStore) -> None:
    now = time.time()
    running = response("resp_bg", status="in_progress", background=True, worker="w1", heartbeat_at=now)
    await store.put_response(running)
    assert await store.heartbeat("alice", "resp_bg", "w1")
    assert not await store.heartbeat("alice", "resp_bg", "w2")  # another worker's row
    cancelled = await store.request_cancel("alice", "resp_bg")
    assert cancelled is not None and cancelled.status == "cancelled"
    assert not await store.heartbeat("alice", "resp_bg", "w1")  # the runner learns it was cancelled
    assert not await store.finish_background(response("resp_bg", status="completed", background=True), None, [])
    assert (await store.get_response("alice", "resp_bg")).status == "cancelled"  # type: ignore[union-attr]

    await store.put_response(response("resp_dead", status="in_progress", background=True, worker="w9",
                                      heartbeat_at=now - 120))
    _, closed = await sweep_once(store, StateSettings(stale_after_s=30, retention_days=None), now=now)
    assert closed == 1
    dead = await store.get_response("alice", "resp_dead")
    assert dead is not None and dead.status == "failed" and dead.body["error"] == STALE_ERROR
