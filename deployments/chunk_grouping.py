"""Grouping streamed chunks for the replica -> ingress handle hop.

Every item a Serve streaming generator yields is a Ray object with a fixed cost, which on these
machines dwarfs the cost of a token. So the replica sends chunks in batches: the first chunk,
and any chunk that follows a quiet gap of at least ``interval_s``, goes at once (time to first
token is never delayed); chunks that arrive sooner after the last send wait until
``interval_s`` has passed and go together.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


async def group_chunks(source: AsyncIterator[T], interval_s: float) -> AsyncIterator[list[T]]:
    """Batches of ``source``'s items, at most one batch per ``interval_s`` (first one at once).

    Closing the returned iterator closes ``source`` (which aborts the generation).
    """
    if interval_s <= 0:
        try:
            async for item in source:
                yield [item]
        finally:
            await source.aclose()  # type: ignore[attr-defined]
        return

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
            queue.put_nowait(_END)
        except Exception as exc:  # noqa: BLE001 - re-raised in the consumer, in order
            queue.put_nowait(exc)
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    def drain(batch: list[T]) -> bool:
        """Move what is queued into ``batch``; True when the stream ended (or failed)."""
        while not queue.empty():
            item = queue.get_nowait()
            if item is _END or isinstance(item, Exception):
                queue.put_nowait(item)  # seen again by the outer loop, after this batch
                return True
            batch.append(item)  # type: ignore[arg-type]
        return False

    task = asyncio.create_task(pump())
    last_sent = float("-inf")
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            batch: list[T] = [item]  # type: ignore[list-item]
            ended = drain(batch)
            wait = last_sent + interval_s - loop.time()
            if wait > 0 and not ended:
                await asyncio.sleep(wait)
                drain(batch)
            last_sent = loop.time()
            yield batch
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
