"""Background responses: run after the request returned, with their status kept in the store.

Any replica can answer for one: its row says whether it is queued, running or done. The replica
running it heartbeats the row; a cancel (through any replica) sets a flag the next heartbeat
sees, which stops the generation; a row whose replica stopped heartbeating is closed as failed
by whichever replica looks at it next.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

from serve_app.core.errors import ServingError
from serve_app.core.gateway import Batch
from serve_app.state.config import StateSettings
from serve_app.state.responses.builder import ResponseBuilder
from serve_app.state.responses.turns import Turn
from serve_app.state.store import Json, StateStore, StoredResponse

logger = logging.getLogger(__name__)

STALE_ERROR: Json = {
    "code": "server_error",
    "message": "The replica running this background response stopped before it finished.",
}


def worker_name() -> str:
    """This process's name in the store's ``worker`` column (unique per ingress replica)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def is_stale(stored: StoredResponse, settings: StateSettings, now: float | None = None) -> bool:
    """Whether a queued or running background response has not been heard of for too long."""
    if not stored.background or stored.status not in ("queued", "in_progress"):
        return False
    last = stored.heartbeat_at or stored.created_at
    return (now or time.time()) - last > settings.stale_after_s


class BackgroundRunner:
    """Runs this replica's background responses and keeps their rows up to date."""

    def __init__(self, store: StateStore, settings: StateSettings, worker: str | None = None) -> None:
        self.store = store
        self.settings = settings
        self.worker = worker or worker_name()
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def submit(
        self, turn: Turn, builder: ResponseBuilder, start_stream: Callable[[], AsyncIterator[Batch]]
    ) -> Json:
        """Store the response as queued and start it; returns the queued ``response`` object."""
        queued = {**builder.response, "status": "queued"}
        record = turn.record(queued, worker=self.worker)
        record.heartbeat_at = time.time()
        await self.store.put_response(record)
        # A fresh context: the request's accounting is finished once the reply is sent.
        task = asyncio.create_task(self._run(turn, builder, start_stream), context=contextvars.Context())
        self._tasks[turn.response_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(turn.response_id, None))
        return queued

    def cancel_local(self, response_id: str) -> None:
        """Stop the generation now if this replica runs it (others notice at their next heartbeat)."""
        task = self._tasks.get(response_id)
        if task is not None:
            task.cancel()

    async def _run(self, turn: Turn, builder: ResponseBuilder, start_stream: Callable[[], AsyncIterator[Batch]]) -> None:
        generation = asyncio.create_task(self._generate(turn, builder, start_stream))
        try:
            while not generation.done():
                await asyncio.wait({generation}, timeout=self.settings.heartbeat_s)
                if not generation.done() and not await self.store.heartbeat(turn.owner, turn.response_id, self.worker):
                    generation.cancel()  # cancelled (or closed) through another replica
            await generation
        except asyncio.CancelledError:
            generation.cancel()
        except Exception:  # noqa: BLE001 - a background failure is recorded, never raised
            logger.exception("background response %s failed", turn.response_id)

    async def _generate(
        self, turn: Turn, builder: ResponseBuilder, start_stream: Callable[[], AsyncIterator[Batch]]
    ) -> None:
        running = turn.record({**builder.response, "status": "in_progress"}, worker=self.worker)
        running.heartbeat_at = time.time()
        if not await self.store.finish_background(running, None, []):
            return  # cancelled while queued
        stream = start_stream()
        try:
            async for batch in stream:
                for chunk in batch:
                    builder.feed(chunk)
            builder.finish()
        except ServingError as error:
            builder.fail(error)
        except Exception as exc:  # noqa: BLE001 - recorded as the response's error
            logger.exception("background response %s failed", turn.response_id, exc_info=exc)
            builder.fail(ServingError(f"generation failed: {type(exc).__name__}"))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        final = turn.record(builder.response, worker=self.worker)
        final.heartbeat_at = time.time()
        items = turn.conversation_items(builder.response) if builder.response["status"] != "failed" else []
        await self.store.finish_background(final, turn.conversation_id, items)

    async def close(self) -> None:
        """Cancel this replica's background work (its rows are closed as stale later)."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
