"""Golden tests of the chunk fold (non-streamed replies) and the stream helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from serve_app.core.backend import fold_chunks
from serve_app.core.errors import EngineError, InvalidRequest
from serve_app.core.internal_types import ChoiceResult, GenerationChunk, TokenLogprob, ToolCallDelta, Usage
from serve_app.core.streams import merge_streams, peek_first
from serve_app.transport.streaming import as_engine_error, stream_frames


def test_fold_chunks_golden() -> None:
    lp = TokenLogprob("a", -1.0)
    call = ToolCallDelta(0, "c1", "f", "{}")
    result = fold_chunks(
        [
            GenerationChunk(1, text="x"),
            GenerationChunk(0, reasoning="r", text="a", logprobs=[lp]),
            GenerationChunk(0, text="b", logprobs=[lp]),
            GenerationChunk(1, tool_calls=[call], finish_reason="tool_calls", usage=Usage(5, 2)),
            GenerationChunk(0, finish_reason="length", usage=Usage(5, 3)),
        ]
    )
    assert result.choices == [
        ChoiceResult(0, text="ab", reasoning="r", logprobs=[lp, lp], finish_reason="length"),
        ChoiceResult(1, text="x", tool_calls=[call], finish_reason="tool_calls"),
    ]
    # The prompt counts once; completions add up over choices.
    assert result.usage == Usage(5, 5)
    assert fold_chunks([]).choices == [] and fold_chunks([]).usage == Usage(0, 0)


async def batches(*items: list[GenerationChunk] | Exception, delay: float = 0.0) -> AsyncIterator[list[GenerationChunk]]:
    for item in items:
        await asyncio.sleep(delay)
        if isinstance(item, Exception):
            raise item
        yield item


async def test_peek_first() -> None:
    stream = batches([GenerationChunk(0, text="a")], [GenerationChunk(0, text="b")])
    assert await peek_first(stream) == [GenerationChunk(0, text="a")]
    assert await peek_first(batches()) is None
    with pytest.raises(InvalidRequest):
        await peek_first(batches(InvalidRequest("bad")))


async def test_stream_frames_in_band_error() -> None:
    stream = batches([GenerationChunk(0, text="b")], EngineError("boom"))
    body = stream_frames(
        [GenerationChunk(0, text="a")],
        stream,
        lambda batch: [c.text.encode() for c in batch],
        lambda: [b"END"],
        lambda error: f"ERR:{error.status}:{error.message}".encode(),
    )
    assert [frame async for frame in body] == [b"a", b"b", b"ERR:500:boom"]


async def test_stream_frames_closing() -> None:
    body = stream_frames(None, batches(), lambda b: [b"x"], lambda: [b"U", b"D"], lambda e: b"E")
    assert [frame async for frame in body] == [b"UD"]


def test_as_engine_error() -> None:
    ours = InvalidRequest("x")
    assert as_engine_error(ours) is ours
    theirs = as_engine_error(RuntimeError("secret detail"))
    assert isinstance(theirs, EngineError) and theirs.message == "generation failed"
    assert "RuntimeError" not in theirs.client_message() and "secret" not in theirs.client_message()


async def test_merge_streams_interleaves_and_fails_fast() -> None:
    a = batches([GenerationChunk(0, text="a0")], [GenerationChunk(0, text="a1")], delay=0.01)
    b = batches([GenerationChunk(1, text="b0")], [GenerationChunk(1, text="b1")], delay=0.01)
    merged = [c.text for batch in [x async for x in merge_streams([a, b])] for c in batch]
    assert sorted(merged) == ["a0", "a1", "b0", "b1"]
    assert merged.index("a0") < merged.index("a1") and merged.index("b0") < merged.index("b1")
    failing = merge_streams([batches([GenerationChunk(0)], EngineError("x")), batches([GenerationChunk(1)], delay=1)])
    with pytest.raises(EngineError):
        async for _ in failing:
            pass
