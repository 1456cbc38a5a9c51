"""Chunk grouping for the handle hop: first chunk at once, bursts grouped, closing aborts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from deployments.chunk_grouping import group_chunks


async def _source(delays: list[float], log: list[str]) -> AsyncIterator[int]:
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield i
        log.append("finished")
    finally:
        log.append("closed")


async def test_first_chunk_is_not_delayed_and_a_burst_is_grouped() -> None:
    log: list[str] = []
    started = time.monotonic()
    batches, times = [], []
    async for batch in group_chunks(_source([0.0] + [0.001] * 20, log), interval_s=0.2):
        batches.append(batch)
        times.append(time.monotonic() - started)
    assert batches[0] == [0]
    assert times[0] < 0.05  # the first chunk went at once, not after the interval
    assert sum(batches, []) == list(range(21))
    assert len(batches) <= 3  # the burst of 20 crossed in one or two sends
    assert log == ["finished", "closed"]


async def test_chunks_after_a_quiet_gap_are_sent_immediately() -> None:
    log: list[str] = []
    started = time.monotonic()
    arrivals = []
    async for batch in group_chunks(_source([0.0, 0.1, 0.1, 0.1], log), interval_s=0.02):
        arrivals.append((batch, time.monotonic() - started))
    assert [b for b, _ in arrivals] == [[0], [1], [2], [3]]
    for i, (_, at) in enumerate(arrivals):
        assert at < 0.1 * i + 0.05  # no added wait beyond the source's own pace


async def test_closing_the_grouped_stream_closes_the_source() -> None:
    log: list[str] = []
    stream = group_chunks(_source([0.01] * 100, log), interval_s=0.01)
    async for _ in stream:
        break
    await stream.aclose()
    await asyncio.sleep(0)
    assert log == ["closed"]


async def test_an_error_after_chunks_arrives_after_them() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise RuntimeError("engine died")

    seen = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for batch in group_chunks(failing(), interval_s=0.05):
            seen.extend(batch)
    assert seen == [1, 2]
