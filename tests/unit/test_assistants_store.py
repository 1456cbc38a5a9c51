"""The Assistants store on both databases: ownership, pages both ways, cascades, run states.

PostgreSQL is a real server these tests start (tests/postgres.py), never a mock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from serve_app.state.assistants.runs import STALE_RUN_ERROR
from serve_app.state.assistants.sql_store import SqlAssistantsStore
from serve_app.state.assistants.store import Cursor, StoredRun
from serve_app.state.config import StateSettings
from serve_app.state.maintenance import sweep_once
from serve_app.state.sql_store import SqlStateStore


@pytest.fixture
async def assistants(store: SqlStateStore) -> AsyncIterator[SqlAssistantsStore]:
    """The Assistants store over the state store's database (each database in turn)."""
    on_it = SqlAssistantsStore(store)
    await on_it.purge_older_than(time.time() + 1e6)  # the module's PostgreSQL server is shared
    yield on_it


def run(run_id: str, status: str = "in_progress", owner: str = "alice", **fields: object) -> StoredRun:
    body = {"id": run_id, "object": "thread.run", "status": status, "expires_at": int(time.time()) + 600}
    fields.setdefault("heartbeat_at", time.time())
    return StoredRun(id=run_id, owner=owner, thread_id="thread_1", status=status, body=body, worker="w1",
                     **fields)  # type: ignore[arg-type]


async def test_objects_belong_to_their_owner(assistants: SqlAssistantsStore) -> None:
    await assistants.put_object("assistant", "alice", {"id": "asst_1", "name": "a"})
    assert await assistants.get_object("assistant", "alice", "asst_1") == {"id": "asst_1", "name": "a"}
    assert await assistants.get_object("assistant", "bob", "asst_1") is None
    assert await assistants.get_object("thread", "alice", "asst_1") is None  # the kind is part of the key
    with pytest.raises(LookupError):
        await assistants.put_object("assistant", "bob", {"id": "asst_1", "name": "stolen"})  # not bob's to change
    assert (await assistants.get_object("assistant", "alice", "asst_1"))["name"] == "a"  # type: ignore[index]
    assert not await assistants.delete_object("assistant", "bob", "asst_1")
    await assistants.put_object("assistant", "alice", {"id": "asst_1", "name": "b"})
    assert (await assistants.get_object("assistant", "alice", "asst_1"))["name"] == "b"  # type: ignore[index]
    assert (await assistants.list_objects("assistant", "bob", Cursor())).items == []


async def test_pages_after_and_before_in_both_orders(assistants: SqlAssistantsStore) -> None:
    for i in range(6):
        await assistants.put_object("message", "alice", {"id": f"msg_{i}"}, thread_id="thread_1")
    await assistants.put_object("message", "alice", {"id": "msg_other"}, thread_id="thread_2")

    async def ids(**cursor: object) -> tuple[list[str], bool]:
        page = await assistants.list_objects("message", "alice", Cursor(**cursor), thread_id="thread_1")  # type: ignore[arg-type]
        return [item["id"] for item in page.items], page.has_more

    assert await ids() == ([f"msg_{i}" for i in reversed(range(6))], False)
    assert await ids(limit=2, order="asc") == (["msg_0", "msg_1"], True)
    assert await ids(limit=2, order="asc", after="msg_1") == (["msg_2", "msg_3"], True)
    assert await ids(limit=2, order="asc", before="msg_4") == (["msg_2", "msg_3"], True)
    assert await ids(limit=2, order="desc", after="msg_4") == (["msg_3", "msg_2"], True)
    assert await ids(limit=2, order="desc", before="msg_1") == (["msg_3", "msg_2"], True)
    assert await ids(limit=10, order="desc", before="msg_4") == (["msg_5"], False)
    assert await ids(order="asc", after="msg_1", before="msg_4") == (["msg_2", "msg_3"], False)
    assert await ids(after="msg_other") == ([], False)  # another thread's id is no cursor here


async def test_deleting_a_thread_takes_its_messages_runs_and_steps(assistants: SqlAssistantsStore) -> None:
    await assistants.put_object("thread", "alice", {"id": "thread_1"})
    await assistants.put_object("message", "alice", {"id": "msg_1"}, thread_id="thread_1")
    await assistants.put_object("step", "alice", {"id": "step_1"}, thread_id="thread_1", run_id="run_1")
    await assistants.put_run(run("run_1", "completed"))
    assert await assistants.delete_object("thread", "alice", "thread_1")
    assert await assistants.get_object("message", "alice", "msg_1") is None
    assert await assistants.get_object("step", "alice", "step_1") is None
    assert await assistants.get_run("alice", "thread_1", "run_1") is None


async def test_run_updates_stop_at_a_cancel(assistants: SqlAssistantsStore) -> None:
    await assistants.put_run(run("run_1"))
    assert await assistants.heartbeat_run("alice", "run_1", "w1")
    assert not await assistants.heartbeat_run("alice", "run_1", "w2")  # not that replica's run
    cancelling = await assistants.request_run_cancel("alice", "thread_1", "run_1")
    assert cancelling is not None and cancelling.status == "cancelling"
    assert not await assistants.heartbeat_run("alice", "run_1", "w1")  # the runner learns of it here
    assert not await assistants.update_run(run("run_1", "completed"))
    assert await assistants.update_run(run("run_1", "cancelled"), honour_cancel=False)  # the runner's last word
    assert (await assistants.get_run("alice", "thread_1", "run_1")).status == "cancelled"  # type: ignore[union-attr]
    # A run that ended is never written again: not by a late runner, not by a cancel.
    assert not await assistants.update_run(run("run_1", "completed"), honour_cancel=False)
    assert (await assistants.request_run_cancel("alice", "thread_1", "run_1")).status == "cancelled"  # type: ignore[union-attr]
    assert not await assistants.update_run(run("run_gone", "completed"), honour_cancel=False)  # nor brought back
    assert await assistants.get_run("alice", "thread_1", "run_gone") is None
    await assistants.put_run(run("run_2", "requires_action"))
    await assistants.put_object("step", "alice", {"id": "step_2", "status": "in_progress"}, thread_id="thread_1",
                                run_id="run_2")
    cancelled = await assistants.request_run_cancel("alice", "thread_1", "run_2")
    assert cancelled is not None and cancelled.status == "cancelled" and cancelled.body["required_action"] is None
    assert (await assistants.get_object("step", "alice", "step_2"))["status"] == "cancelled"  # type: ignore[index]
    assert await assistants.request_run_cancel("bob", "thread_1", "run_2") is None


async def test_stale_runs_fail_and_waiting_ones_expire(assistants: SqlAssistantsStore) -> None:
    now = time.time()
    await assistants.put_run(run("run_dead", heartbeat_at=now - 100))
    await assistants.put_run(run("run_alive", heartbeat_at=now))
    waiting = run("run_waiting", "requires_action")
    waiting.body["expires_at"] = int(now) - 1
    await assistants.put_run(waiting)
    await assistants.put_run(run("run_orphaned_cancel", "cancelling", heartbeat_at=now - 100))
    await assistants.put_object("message", "alice", {"id": "msg_open", "status": "in_progress"}, thread_id="thread_1",
                                run_id="run_dead")
    assert await assistants.close_stale_runs(now - 30, now, STALE_RUN_ERROR) == 3
    message = await assistants.get_object("message", "alice", "msg_open")
    assert message is not None and message["status"] == "incomplete"
    assert message["incomplete_details"] == {"reason": "run_failed"}
    states = {rid: (await assistants.get_run("alice", "thread_1", rid)).body for rid in  # type: ignore[union-attr]
              ("run_dead", "run_alive", "run_waiting", "run_orphaned_cancel")}
    assert states["run_dead"]["status"] == "failed" and states["run_dead"]["last_error"] == STALE_RUN_ERROR
    assert states["run_alive"]["status"] == "in_progress"
    assert states["run_waiting"]["status"] == "expired"
    assert states["run_orphaned_cancel"]["status"] == "cancelled"


async def test_the_sweep_keeps_both_stores_tidy(assistants: SqlAssistantsStore) -> None:
    old = time.time() - 40 * 86400
    await assistants.put_object("assistant", "alice", {"id": "asst_old", "created_at": old})
    await assistants.put_object("assistant", "alice", {"id": "asst_new"})
    await assistants.put_run(run("run_dead", heartbeat_at=time.time() - 100))
    purged, closed = await sweep_once(assistants.base, StateSettings(), assistants=assistants)
    assert purged >= 1 and closed >= 1
    assert await assistants.get_object("assistant", "alice", "asst_old") is None
    assert await assistants.get_object("assistant", "alice", "asst_new") is not None
    assert (await assistants.get_run("alice", "thread_1", "run_dead")).status == "failed"  # type: ignore[union-attr]


async def test_metadata_changes_touch_nothing_else(assistants: SqlAssistantsStore) -> None:
    await assistants.put_run(run("run_1"))
    runner_view = run("run_1", "completed")
    assert await assistants.update_run(runner_view)
    changed = await assistants.set_run_metadata("alice", "thread_1", "run_1", {"k": "v"})
    assert changed is not None and changed.status == "completed" and changed.body["metadata"] == {"k": "v"}
    assert await assistants.set_run_metadata("bob", "thread_1", "run_1", {"k": "w"}) is None
