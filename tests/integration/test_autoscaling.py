"""Autoscaling: sustained load adds a replica, idle time removes it, streams in flight finish."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.harness import deployed, model_deployment, running_replicas

pytestmark = pytest.mark.ray

TOKENS = 60
ARGS: dict[str, Any] = {
    "models": [
        {
            "name": "elastic:1",
            "engine": "fake",
            "engine_args": {"token_interval_s": 0.1, "output_tokens": TOKENS},
            "deployment": {
                "autoscaling_config": {
                    "min_replicas": 1,
                    "max_replicas": 2,
                    "target_ongoing_requests": 2,
                    "upscale_delay_s": 0.5,
                    "downscale_delay_s": 2.0,
                    "metrics_interval_s": 0.5,
                    "look_back_period_s": 1.0,
                },
                "max_ongoing_requests": 8,
                "graceful_shutdown_timeout_s": 60,  # a survivor below streams for 20 s
                "ray_actor_options": {"num_cpus": 0.1},
            },
        }
    ],
    "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with deployed(ARGS) as base_url:
        yield base_url


async def _stream(client: httpx.AsyncClient, tokens: int) -> tuple[str, str | None, float]:
    """(text, finish_reason, end time) of one streamed chat of ``tokens`` tokens (0.1 s each)."""
    body = {"model": "elastic:1", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": tokens, "ignore_eos": True}
    text, finish = "", None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                frame = json.loads(line[6:])
                assert "error" not in frame, frame
                text += frame["choices"][0]["delta"].get("content") or ""
                finish = frame["choices"][0]["finish_reason"] or finish
    return text, finish, time.monotonic()


async def _poll_replicas(deployment: str, want: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(running_replicas, deployment) == want:
            return time.monotonic()
        await asyncio.sleep(0.25)
    raise AssertionError(f"{deployment} did not reach {want} replicas in {timeout_s}s")


def test_load_scales_up_idle_scales_down_and_streams_in_flight_finish(url: str) -> None:
    deployment = model_deployment(ARGS, "elastic:1")
    assert running_replicas(deployment) == 1
    # Lengths chosen so that luck plays no part on a slow machine: the load (15 s) lasts longer
    # than scaling up takes, and the survivors (20 s) far longer than scaling down.
    load_tokens, survivor_tokens = 150, 200

    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            # Sustained load: 6 concurrent streams against a target of 2 per replica.
            load = [asyncio.create_task(_stream(client, load_tokens)) for _ in range(6)]
            await _poll_replicas(deployment, 2, timeout_s=40)
            results = await asyncio.gather(*load)
            # Two streams stay in flight while the load is gone: Serve scales down under them.
            survivors = [asyncio.create_task(_stream(client, survivor_tokens)) for _ in range(2)]
            scaled_down_at = await _poll_replicas(deployment, 1, timeout_s=40)
            finished = await asyncio.gather(*survivors)
        for text, finish, _ in results:
            assert (text, finish) == ("".join(f"tok{i} " for i in range(load_tokens)), "stop")
        for text, finish, _ in finished:
            assert (text, finish) == ("".join(f"tok{i} " for i in range(survivor_tokens)), "stop")
        # At least one survivor was still streaming when the replica count dropped.
        assert max(ended for _, _, ended in finished) > scaled_down_at

    asyncio.run(main())
