"""The Assistants store's protocol and run record.

Assistants, threads, thread messages and run steps are wire-shaped JSON objects kept by kind;
runs also keep their transcript (the tool calls and outputs of the run so far) and the same
worker / heartbeat / cancel columns as background responses, so any replica can answer a poll
and a run whose replica died is found and closed. Every call takes the ``owner``; another
owner's object is reported absent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from serve_app.state.store import Json, Order, Page

Kind = Literal["assistant", "thread", "message", "step"]
# A run waits in these states; the others are final.
ACTIVE_RUN_STATUSES = ("queued", "in_progress", "requires_action", "cancelling")
FINAL_RUN_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})


@dataclass(slots=True)
class StoredRun:
    id: str
    owner: str
    thread_id: str
    status: str
    body: Json  # the ``thread.run`` object
    transcript: list[Json] = field(default_factory=list)  # assistant tool calls and tool outputs
    created_at: float = field(default_factory=time.time)
    worker: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class Cursor:
    """A list request's paging: OpenAI's ``after`` / ``before`` ids, ``limit`` and ``order``."""

    limit: int = 20
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


@runtime_checkable
class AssistantsStore(Protocol):
    """Where assistants, threads, messages, runs and run steps are kept."""

    async def put_object(self, kind: Kind, owner: str, body: Json, *, thread_id: str | None = None,
                         run_id: str | None = None) -> None:
        """Insert ``body`` (by its ``id``) or replace the stored one; ``LookupError`` if the id is
        another owner's (ids are the server's own, so only a forged one meets this)."""
        ...

    async def get_object(self, kind: Kind, owner: str, object_id: str, *, thread_id: str | None = None) -> Json | None:
        ...

    async def delete_object(self, kind: Kind, owner: str, object_id: str, *, thread_id: str | None = None) -> bool:
        """Delete one object; a thread takes its messages, runs and steps with it."""
        ...

    async def list_objects(self, kind: Kind, owner: str, cursor: Cursor, *, thread_id: str | None = None,
                           run_id: str | None = None) -> Page:
        ...

    async def put_run(self, run: StoredRun) -> None:
        """Insert a new run."""
        ...

    async def update_run(self, run: StoredRun, *, expect: tuple[str, ...] = ACTIVE_RUN_STATUSES,
                         honour_cancel: bool = True) -> bool:
        """Write a run's progress if its stored status is one of ``expect`` (and, with
        ``honour_cancel``, no cancel was asked for meanwhile); False otherwise. A run that ended
        (or is gone) is never written again."""
        ...

    async def set_run_metadata(self, owner: str, thread_id: str, run_id: str, metadata: dict[str, str]) -> StoredRun | None:
        """Change only the run's metadata, whatever its runner writes meanwhile."""
        ...

    async def get_run(self, owner: str, thread_id: str, run_id: str) -> StoredRun | None:
        ...

    async def list_runs(self, owner: str, thread_id: str, cursor: Cursor) -> Page:
        ...

    async def heartbeat_run(self, owner: str, run_id: str, worker: str) -> bool:
        """Note that ``worker`` still runs it; False once it was cancelled or closed."""
        ...

    async def request_run_cancel(self, owner: str, thread_id: str, run_id: str) -> StoredRun | None:
        """Mark an active run cancelled (``cancelling`` while a replica still runs it)."""
        ...

    async def close_stale_runs(self, older_than: float, now: float, error: Json, *, run_id: str | None = None) -> int:
        """Fail runs whose replica stopped heartbeating, expire those past ``expires_at`` (only
        ``run_id`` if given); their open steps and messages end with them."""
        ...

    async def purge_older_than(self, cutoff: float) -> int:
        ...
