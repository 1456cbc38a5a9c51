"""The Assistants store on the state store's database (same engine, same transactions' rules).

Ownership is in every query, as in :mod:`serve_app.state.sql_store`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Table, and_, delete, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from serve_app.state.assistants.store import ACTIVE_RUN_STATUSES, Cursor, Kind, StoredRun
from serve_app.state.sql_store import SqlStateStore
from serve_app.state.store import Json, Page
from serve_app.state.tables import assistant_objects, assistant_runs

objects, runs = assistant_objects, assistant_runs


def _run_of(row: Row[Any]) -> StoredRun:
    return StoredRun(
        id=row.id, owner=row.owner, thread_id=row.thread_id, status=row.status, body=row.body,
        transcript=row.transcript, created_at=row.created_at, worker=row.worker,
        heartbeat_at=row.heartbeat_at, cancel_requested=row.cancel_requested,
    )


def _run_values(run: StoredRun) -> dict[str, Any]:
    return {
        "id": run.id, "owner": run.owner, "thread_id": run.thread_id, "created_at": run.created_at,
        "status": run.status, "body": run.body, "transcript": run.transcript, "worker": run.worker,
        "heartbeat_at": run.heartbeat_at, "cancel_requested": run.cancel_requested,
    }


async def _page(conn: AsyncConnection, table: Table, where: ColumnElement[bool], cursor: Cursor) -> Page:
    """One cursor page of ``table`` rows matching ``where``, in list order (``seq``)."""
    descending = cursor.order == "desc"
    query = select(table.c.seq, table.c.body).where(where)
    for anchor, later in ((cursor.after, True), (cursor.before, False)):
        if anchor is None:
            continue
        row = (await conn.execute(select(table.c.seq).where(and_(where, table.c.id == anchor)))).first()
        if row is None:
            return Page([], False)
        # "after" is further along the list's order; "before" is back towards its start.
        query = query.where(table.c.seq < row.seq if later == descending else table.c.seq > row.seq)
    # A page "before" an id is the nearest items to it: read towards the start, then flip.
    backwards = cursor.before is not None and cursor.after is None
    ascending = descending == backwards
    query = query.order_by(table.c.seq.asc() if ascending else table.c.seq.desc()).limit(cursor.limit + 1)
    rows = (await conn.execute(query)).all()
    items = [row[1] for row in rows[: cursor.limit]]
    if backwards:
        items.reverse()
    return Page(items, len(rows) > cursor.limit)


class SqlAssistantsStore:
    """:class:`serve_app.state.assistants.store.AssistantsStore` over a :class:`SqlStateStore`'s
    database (its migrations create these tables too)."""

    def __init__(self, base: SqlStateStore) -> None:
        self.base = base

    def _object_where(self, kind: Kind, owner: str, object_id: str, thread_id: str | None) -> ColumnElement[bool]:
        where = and_(objects.c.id == object_id, objects.c.kind == kind, objects.c.owner == owner)
        return where if thread_id is None else and_(where, objects.c.thread_id == thread_id)

    async def put_object(self, kind: Kind, owner: str, body: Json, *, thread_id: str | None = None,
                         run_id: str | None = None) -> None:
        async with await self.base.begin() as conn:
            changed = await conn.execute(
                update(objects).where(self._object_where(kind, owner, body["id"], thread_id)).values(body=body)
            )
            if changed.rowcount == 0:
                taken = await conn.execute(select(objects.c.seq).where(objects.c.id == body["id"]))
                if taken.first() is not None:
                    raise LookupError(body["id"])  # another owner's (or kind's) id: never theirs to change
                await conn.execute(insert(objects).values(
                    id=body["id"], kind=kind, owner=owner, thread_id=thread_id, run_id=run_id,
                    created_at=float(body.get("created_at") or time.time()), body=body,
                ))

    async def get_object(self, kind: Kind, owner: str, object_id: str, *, thread_id: str | None = None) -> Json | None:
        async with await self.base.begin() as conn:
            row = (await conn.execute(
                select(objects.c.body).where(self._object_where(kind, owner, object_id, thread_id))
            )).first()
        return None if row is None else row.body

    async def delete_object(self, kind: Kind, owner: str, object_id: str, *, thread_id: str | None = None) -> bool:
        async with await self.base.begin() as conn:
            result = await conn.execute(delete(objects).where(self._object_where(kind, owner, object_id, thread_id)))
            if result.rowcount and kind == "thread":
                await conn.execute(delete(objects).where(and_(objects.c.thread_id == object_id, objects.c.owner == owner)))
                await conn.execute(delete(runs).where(and_(runs.c.thread_id == object_id, runs.c.owner == owner)))
        return result.rowcount > 0

    async def list_objects(self, kind: Kind, owner: str, cursor: Cursor, *, thread_id: str | None = None,
                           run_id: str | None = None) -> Page:
        where = and_(objects.c.kind == kind, objects.c.owner == owner)
        if thread_id is not None:
            where = and_(where, objects.c.thread_id == thread_id)
        if run_id is not None:
            where = and_(where, objects.c.run_id == run_id)
        async with await self.base.begin() as conn:
            return await _page(conn, objects, where, cursor)

    # -- runs -------------------------------------------------------------------------------

    async def put_run(self, run: StoredRun) -> None:
        async with await self.base.begin() as conn:
            await conn.execute(insert(runs).values(**_run_values(run)))

    async def update_run(self, run: StoredRun, *, expect: tuple[str, ...] = ACTIVE_RUN_STATUSES,
                         honour_cancel: bool = True) -> bool:
        where = and_(runs.c.id == run.id, runs.c.owner == run.owner, runs.c.status.in_(expect))
        if honour_cancel:
            where = and_(where, runs.c.cancel_requested.is_(False))
        async with await self.base.begin() as conn:
            changed = await conn.execute(update(runs).where(where).values(**_run_values(run)))
        return changed.rowcount > 0

    async def get_run(self, owner: str, thread_id: str, run_id: str) -> StoredRun | None:
        async with await self.base.begin() as conn:
            row = (await conn.execute(select(runs).where(
                and_(runs.c.id == run_id, runs.c.owner == owner, runs.c.thread_id == thread_id)
            ))).first()
        return None if row is None else _run_of(row)

    async def list_runs(self, owner: str, thread_id: str, cursor: Cursor) -> Page:
        async with await self.base.begin() as conn:
            return await _page(conn, runs, and_(runs.c.owner == owner, runs.c.thread_id == thread_id), cursor)

    async def set_run_metadata(self, owner: str, thread_id: str, run_id: str, metadata: dict[str, str]) -> StoredRun | None:
        for _ in range(5):  # compare-and-set on the status, so a concurrent write is never undone
            run = await self.get_run(owner, thread_id, run_id)
            if run is None:
                return None
            run.body = {**run.body, "metadata": metadata}
            async with await self.base.begin() as conn:
                changed = await conn.execute(
                    update(runs).where(and_(runs.c.id == run_id, runs.c.status == run.status,
                                            runs.c.heartbeat_at.is_(None) if run.heartbeat_at is None
                                            else runs.c.heartbeat_at == run.heartbeat_at))
                    .values(body=run.body)
                )
            if changed.rowcount:
                return run
        return await self.get_run(owner, thread_id, run_id)

    async def heartbeat_run(self, owner: str, run_id: str, worker: str) -> bool:
        async with await self.base.begin() as conn:
            changed = await conn.execute(
                update(runs)
                .where(and_(runs.c.id == run_id, runs.c.owner == owner, runs.c.worker == worker,
                            runs.c.cancel_requested.is_(False), runs.c.status.in_(("queued", "in_progress"))))
                .values(heartbeat_at=time.time())
            )
        return changed.rowcount > 0

    async def request_run_cancel(self, owner: str, thread_id: str, run_id: str) -> StoredRun | None:
        for _ in range(5):
            run = await self.get_run(owner, thread_id, run_id)
            if run is None or run.status not in ACTIVE_RUN_STATUSES:
                return run
            # Nothing runs a run that waits for tool outputs: it is cancelled at once.
            status = "cancelled" if run.status == "requires_action" else "cancelling"
            seen = run.status
            run.status, run.cancel_requested = status, True
            run.body = {**run.body, "status": status, "required_action": None,
                        "cancelled_at": int(time.time()) if status == "cancelled" else None}
            async with await self.base.begin() as conn:
                changed = await conn.execute(
                    update(runs).where(and_(runs.c.id == run_id, runs.c.status == seen)).values(**_run_values(run))
                )
                if changed.rowcount and status == "cancelled":
                    await self._close_open_objects(conn, run, "cancelled")
            if changed.rowcount:
                return run
        return await self.get_run(owner, thread_id, run_id)

    @staticmethod
    async def _close_open_objects(conn: AsyncConnection, run: StoredRun, outcome: str) -> None:
        """A run closed by anyone but its runner (cancel while waiting, expiry, a dead replica):
        its steps and messages still in progress end with it."""
        now = int(time.time())
        rows = (await conn.execute(select(objects.c.seq, objects.c.kind, objects.c.body).where(
            and_(objects.c.run_id == run.id, objects.c.owner == run.owner)
        ))).all()
        for row in rows:
            if row.body.get("status") != "in_progress":
                continue
            if row.kind == "step":
                body = {**row.body, "status": outcome, f"{outcome}_at": now}
            else:
                body = {**row.body, "status": "incomplete", "incomplete_at": now,
                        "incomplete_details": {"reason": f"run_{outcome}"}}
            await conn.execute(update(objects).where(objects.c.seq == row.seq).values(body=body))

    async def close_stale_runs(self, older_than: float, now: float, error: Json, *, run_id: str | None = None) -> int:
        closed = 0
        async with await self.base.begin() as conn:
            query = select(runs).where(runs.c.status.in_(ACTIVE_RUN_STATUSES))
            if run_id is not None:
                query = query.where(runs.c.id == run_id)
            for row in (await conn.execute(query)).all():
                run = _run_of(row)
                expires_at = run.body.get("expires_at")
                last = run.heartbeat_at or run.created_at
                if run.status == "requires_action" and expires_at is not None and expires_at < now:
                    changes: Json = {"status": "expired", "required_action": None, "expired_at": int(now)}
                elif run.status == "cancelling" and last < older_than:
                    changes = {"status": "cancelled", "cancelled_at": int(now)}
                elif run.status in ("queued", "in_progress") and last < older_than:
                    changes = {"status": "failed", "failed_at": int(now), "last_error": error}
                else:
                    continue
                # Only if nothing moved meanwhile (a heartbeat, the runner's own last write).
                same = runs.c.heartbeat_at.is_(None) if run.heartbeat_at is None else runs.c.heartbeat_at == run.heartbeat_at
                changed = await conn.execute(
                    update(runs).where(and_(runs.c.id == run.id, runs.c.status == run.status, same))
                    .values(status=changes["status"], body={**run.body, **changes})
                )
                if changed.rowcount:
                    run.status = changes["status"]
                    await self._close_open_objects(conn, run, {"failed": "failed"}.get(run.status, run.status))
                    closed += 1
        return closed

    async def purge_older_than(self, cutoff: float) -> int:
        async with await self.base.begin() as conn:
            gone = await conn.execute(delete(objects).where(objects.c.created_at < cutoff))
            gone_runs = await conn.execute(delete(runs).where(runs.c.created_at < cutoff))
        return gone.rowcount + gone_runs.rowcount
