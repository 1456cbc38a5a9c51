"""Turning a backend's chunk stream into a streamed HTTP response, for every API.

The first batch is awaited before anything is sent, so a failure before the first byte gets its
real status; a failure after it is framed in-band by the caller's ``render_error`` and the
stream closes. Closing (client disconnect, cancellation) closes the backend stream, which aborts
the generation.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from starlette.responses import StreamingResponse

from serve_app.core.errors import EngineError, ServingError
from serve_app.core.internal_types import GenerationChunk

logger = logging.getLogger(__name__)

Batch = list[GenerationChunk]


def as_engine_error(exc: Exception) -> ServingError:
    """Any failure as a :class:`ServingError`, keeping ours as they are."""
    if isinstance(exc, ServingError):
        return exc
    logger.exception("generation failed", exc_info=exc)
    return EngineError("generation failed")


async def stream_frames(
    first: Batch | None,
    rest: AsyncIterator[Batch],
    frame_batch: Callable[[Batch], Iterable[bytes]],
    closing_frames: Callable[[], Iterable[bytes] | Awaitable[Iterable[bytes]]],
    render_error: Callable[[ServingError], bytes],
) -> AsyncIterator[bytes]:
    """Body of a streamed reply: framed batches, closing frames, or one in-band error frame.

    Each batch becomes one write, so chunks grouped across the handle hop are sent together.
    ``closing_frames`` may be a coroutine (a stateful API stores the turn before its last event);
    its failure is sent in-band like any other.
    """
    try:
        if first is not None:
            yield b"".join(frame_batch(first))
            async for batch in rest:
                yield b"".join(frame_batch(batch))
        closing = closing_frames()
        if inspect.isawaitable(closing):
            closing = await closing
        yield b"".join(closing)
    except Exception as exc:  # noqa: BLE001 - every failure after the first byte goes in-band
        error = as_engine_error(exc)
        if error.status >= 500:
            logger.warning("stream ended by a server error: %s", error.message)
        yield render_error(error)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]


def streaming_response(body: AsyncIterator[bytes], media_type: str, headers: dict[str, str]) -> StreamingResponse:
    """A streamed reply that proxies and load balancers do not buffer."""
    return StreamingResponse(
        body,
        media_type=media_type,
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", **headers},
    )
