"""A client that goes away mid-stream aborts its generation, and only its own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from deployments.engines.fake import FakeEngine, FakeEngineConfig
from tests.conftest import CHAT_MODEL, build_fake_app
from tests.servers import serve_in_thread

SLOW = FakeEngineConfig(token_interval_s=0.05, output_tokens=200)


@pytest.fixture
def slow_server() -> Iterator[tuple[str, FakeEngine]]:
    app, engines = build_fake_app(engine_config=SLOW)
    with serve_in_thread(app) as url:
        yield url, engines[CHAT_MODEL]


STREAMS = {
    "openai-chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stream": True}),
    "openai-completions": ("/v1/completions", {"prompt": "hi", "stream": True, "max_tokens": 60}),
    "ollama-chat": ("/api/chat", {"messages": [{"role": "user", "content": "hi"}]}),
    "ollama-generate": ("/api/generate", {"prompt": "hi"}),
}


async def wait_until(condition: object, timeout: float = 10.0) -> float:
    # Generous: how soon a loaded machine notices a disconnect is not what these tests check.
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def read_chunks(response: httpx.Response, count: int) -> list[str]:
    """The first ``count`` non-empty frames (SSE events or NDJSON lines)."""
    frames: list[str] = []
    async for line in response.aiter_lines():
        if line.strip():
            frames.append(line)
            if len(frames) == count:
                break
    return frames


@pytest.mark.parametrize("api", list(STREAMS))
async def test_disconnect_aborts_generation(slow_server: tuple[str, FakeEngine], api: str) -> None:
    url, engine = slow_server
    path, body = STREAMS[api]
    body = {"model": CHAT_MODEL, **body}
    sibling_body = {**body, "max_tokens": 10} if path.startswith("/v1") else {**body, "options": {"num_predict": 10}}

    async with httpx.AsyncClient(base_url=url, timeout=10) as http:

        async def sibling() -> list[str]:
            async with http.stream("POST", path, json=sibling_body, headers={"x-request-id": "sibling"}) as reply:
                return [line async for line in reply.aiter_lines() if line.strip()]

        sibling_task = asyncio.create_task(sibling())
        async with http.stream("POST", path, json=body, headers={"x-request-id": "leaver"}) as reply:
            assert reply.status_code == 200
            frames = await read_chunks(reply, 3)
            assert len(frames) == 3
            assert "leaver" in engine.in_flight
        # Leaving the block closed the connection.
        await wait_until(lambda: "leaver" in engine.aborted and "leaver" not in engine.in_flight)
        tokens_at_abort = engine.tokens_generated
        sibling_frames = await sibling_task

    assert "sibling" not in engine.aborted
    assert engine.in_flight == set()
    # The sibling ran to its natural end.
    last = sibling_frames[-1]
    if path.startswith("/v1"):
        assert last == "data: [DONE]"
        assert json.loads(sibling_frames[-2].removeprefix("data: "))["choices"][0]["finish_reason"] == "length"
    else:
        assert json.loads(last)["done"] is True and json.loads(last)["done_reason"] == "length"
    # After the abort only the sibling's (at most 10) tokens were generated, then nothing at all.
    assert engine.tokens_generated <= tokens_at_abort + 10
    settled = engine.tokens_generated
    await asyncio.sleep(0.2)
    assert engine.tokens_generated == settled


async def test_disconnect_during_non_streamed_request(slow_server: tuple[str, FakeEngine]) -> None:
    url, engine = slow_server
    async with httpx.AsyncClient(base_url=url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                "/v1/chat/completions",
                json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-request-id": "impatient"},
            )
    await wait_until(lambda: "impatient" in engine.aborted and not engine.in_flight)


async def test_disconnect_aborts_every_prompt_of_a_batch(slow_server: tuple[str, FakeEngine]) -> None:
    url, engine = slow_server
    body = {"model": CHAT_MODEL, "prompt": ["a", "b", "c"], "stream": True, "max_tokens": 60}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        async with http.stream("POST", "/v1/completions", json=body, headers={"x-request-id": "batch"}) as reply:
            await read_chunks(reply, 4)
        await wait_until(lambda: not engine.in_flight)
    assert sorted(engine.aborted) == ["batch", "batch-1", "batch-2"]
