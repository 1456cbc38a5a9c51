"""Helpers over streams of chunk batches, shared by every API and the gateway.

A backend's generation is an async iterator of batches (lists of chunks). These helpers peek its
first batch (so failures before the first byte keep their status), collect it for non-streamed
replies, cut it off at a deadline and merge several generations into one stream. Each closes the
stream it was given on the way out, which aborts the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from serve_app.core.errors import DeadlineExceeded
from serve_app.core.internal_types import GenerationChunk

Batch = list[GenerationChunk]


async def peek_first(stream: AsyncIterator[Batch]) -> Batch | None:
    """The first batch of ``stream`` (``None`` if it is empty); closes it on failure."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise


async def collect(stream: AsyncIterator[Batch]) -> list[GenerationChunk]:
    """Every chunk of ``stream``, in order (the non-streaming path)."""
    chunks: list[GenerationChunk] = []
    try:
        async for batch in stream:
            chunks.extend(batch)
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return chunks


async def merge_streams(streams: list[AsyncIterator[Batch]]) -> AsyncIterator[Batch]:
    """Interleave several generations' batches as they arrive (OpenAI prompt batches).

    Each stream's chunk indices must already be distinct. The first failure ends the merge and
    closes every stream.
    """
    if len(streams) == 1:
        async for batch in streams[0]:
            yield batch
        return
    queue: asyncio.Queue[tuple[Batch | None, BaseException | None]] = asyncio.Queue()

    async def pump(stream: AsyncIterator[Batch]) -> None:
        try:
            async for batch in stream:
                await queue.put((batch, None))
            await queue.put((None, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((None, exc))
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            batch, error = await queue.get()
            if error is not None:
                raise error
            if batch is None:
                remaining -= 1
            else:
                yield batch
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def with_deadline(stream: AsyncIterator[Batch], deadline_s: float) -> AsyncIterator[Batch]:
    """``stream`` cut off with :class:`DeadlineExceeded` once ``deadline_s`` have passed.

    Closing the inner stream on the way out aborts the generation.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    try:
        while True:
            try:
                async with asyncio.timeout_at(end):
                    batch = await stream.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceeded(deadline_s) from None
            yield batch
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
