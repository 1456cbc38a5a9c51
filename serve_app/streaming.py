"""Turning a backend's chunk stream into an HTTP response, for both APIs.

The first batch is awaited before anything is sent, so a failure before the first byte gets its
real status; a failure after it is framed in-band by the caller's ``render_error`` and the
stream closes. Closing (client disconnect, cancellation) closes the backend stream, which aborts
the generation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable

from starlette.responses import StreamingResponse

from serve_app.errors import DeadlineExceeded, EngineError, ServingError
from serve_app.internal_types import GenerationChunk

logger = logging.getLogger(__name__)

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


def as_engine_error(exc: Exception) -> ServingError:
    """Any failure as a :class:`ServingError`, keeping ours as they are."""
    if isinstance(exc, ServingError):
        return exc
    logger.exception("generation failed", exc_info=exc)
    return EngineError(f"generation failed: {type(exc).__name__}")


async def stream_frames(
    first: Batch | None,
    rest: AsyncIterator[Batch],
    frame_batch: Callable[[Batch], Iterable[bytes]],
    closing_frames: Callable[[], Iterable[bytes]],
    render_error: Callable[[ServingError], bytes],
) -> AsyncIterator[bytes]:
    """Body of a streamed reply: framed batches, closing frames, or one in-band error frame.

    Each batch becomes one write, so chunks grouped across the handle hop are sent together.
    """
    try:
        if first is not None:
            yield b"".join(frame_batch(first))
            async for batch in rest:
                yield b"".join(frame_batch(batch))
        yield b"".join(closing_frames())
    except Exception as exc:  # noqa: BLE001 - every failure after the first byte goes in-band
        yield render_error(as_engine_error(exc))
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def streaming_response(body: AsyncIterator[bytes], media_type: str, headers: dict[str, str]) -> StreamingResponse:
    """A streamed reply that proxies and load balancers do not buffer."""
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers},
    )


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
