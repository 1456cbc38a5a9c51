"""Cache-aware routing across three replicas of the fake engine (a per-replica LRU prefix cache).

The fake engine reports the prompt tokens its own cache held (``usage.prompt_tokens_details.
cached_tokens``); caches are per replica, so a cached turn proves where it landed. Every
assertion follows from the router's rules whatever the arrival order: no sleeps decide anything.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray

from tests.integration.harness import deployed, model_deployment, replica_actor_names, wait_for

pytestmark = pytest.mark.ray

MODEL = "router:1"
ARGS: dict[str, Any] = {
    "models": [
        {
            "name": MODEL,
            "engine": "fake",
            "engine_args": {
                "token_interval_s": 0.01,
                "output_tokens": 8,
                "prefix_cache_tokens": 4096,
                "cache_block_tokens": 16,
                "prefill_s_per_token": 0.0002,
            },
            "context_length": 8192,
            "deployment": {
                "num_replicas": 3,
                "max_ongoing_requests": 32,
                "ray_actor_options": {"num_cpus": 0.1},
            },
            "routing": {"policy": "cache_aware", "stats_period_s": 0.5},
        }
    ],
    "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with deployed(ARGS) as base_url:
        yield base_url


def _system_prompt(topic: int, words: int = 400) -> str:
    return " ".join(f"rule{topic}-{i}" for i in range(words))


async def _chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int = 8) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _metric(text: str, name: str) -> dict[str, float]:
    """``{replica: value}`` of one routing family on /metrics."""
    values = {}
    for line in text.splitlines():
        match = re.match(rf'{name}\{{deployment="[^"]*",replica="([^"]+)"\}} ([0-9.e+-]+)$', line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


async def _conversations(client: httpx.AsyncClient, topics: list[int], turns: int) -> list[list[dict[str, int]]]:
    """Chats that take their turns together: every chat's turn k, then every chat's turn k+1."""
    chats = [[{"role": "system", "content": _system_prompt(topic)}] for topic in topics]
    usages: list[list[dict[str, int]]] = [[] for _ in topics]

    async def turn(i: int, k: int) -> None:
        chats[i].append({"role": "user", "content": f"question {k} about topic {topics[i]}"})
        body = await _chat(client, chats[i])
        usages[i].append({**body["usage"], "cached": body["usage"]["prompt_tokens_details"]["cached_tokens"]})
        chats[i].append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})

    for k in range(turns):
        await asyncio.gather(*(turn(i, k) for i in range(len(topics))))
    return usages


def test_turns_of_one_chat_land_on_the_replica_that_holds_it(url: str) -> None:
    async def run() -> list[list[dict[str, int]]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await _conversations(client, list(range(6)), turns=4)

    chats = asyncio.run(run())
    for usages in chats:
        assert usages[0]["cached"] < 400  # a new system prompt is nowhere yet
        for previous, turn in zip(usages, usages[1:], strict=False):
            # Everything before this turn's question was the previous turn's prompt and answer:
            # the replica that served it holds all its full blocks.
            assert turn["cached"] >= previous["prompt_tokens"] - 16, (previous, turn)

    metrics = httpx.get(f"{url}/metrics").text
    routed = _metric(metrics, "llm_router_requests_total")
    assert sum(routed.values()) == 24 and len(routed) == 3, routed
    predicted = _metric(metrics, "llm_router_predicted_prefix_hit_tokens_total")
    prompt = _metric(metrics, "llm_router_prompt_tokens_total")
    assert sum(predicted.values()) / sum(prompt.values()) > 0.5, (predicted, prompt)
    # The engines' own counters, as the replicas report them to the router.
    wait_for(
        lambda: sum(_metric(httpx.get(f"{url}/metrics").text, "llm_engine_prefix_cache_hits_tokens_total").values())
        >= sum(u["cached"] for usages in chats for u in usages),
        timeout_s=30,
        what="the replicas' prefix-cache counters on /metrics",
    )


def test_one_hot_prefix_is_spread_within_the_load_bound(url: str) -> None:
    streams = 12
    shared = [{"role": "system", "content": _system_prompt(99)}]

    async def run() -> tuple[dict[str, float], list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            first_chunk = asyncio.Event()
            started = 0
            finishes: list[str] = []

            async def one(i: int) -> None:
                nonlocal started
                body = {
                    "model": MODEL,
                    "messages": [*shared, {"role": "user", "content": f"unique question {i}"}],
                    # 10 s of tokens: all twelve are in flight together however slowly the last starts.
                    "max_tokens": 1000,
                    "ignore_eos": True,
                    "stream": True,
                }
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    lines = response.aiter_lines()
                    async for line in lines:
                        if line.startswith("data: {"):
                            break
                    started += 1
                    if started == streams:
                        first_chunk.set()
                    await first_chunk.wait()
                    async for line in lines:
                        if line.startswith("data: {"):
                            frame = json.loads(line[6:])
                            assert "error" not in frame, frame
                            finish = frame["choices"][0]["finish_reason"] if frame["choices"] else None
                            if finish:
                                finishes.append(finish)

            tasks = [asyncio.create_task(one(i)) for i in range(streams)]
            await first_chunk.wait()
            metrics = (await client.get("/metrics")).text
            await asyncio.gather(*tasks)
            return _metric(metrics, "llm_router_in_flight_requests"), finishes

    in_flight, finishes = asyncio.run(run())
    assert len(finishes) == streams  # every stream ran to its end
    assert sum(in_flight.values()) == streams, in_flight
    average = streams / 3
    assert max(in_flight.values()) / average <= 1.5, in_flight


def test_a_replica_that_dies_leaves_the_index_and_its_chats_move(url: str) -> None:
    deployment = model_deployment(ARGS, MODEL)

    async def turns(n: int) -> list[list[dict[str, int]]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await _conversations(client, [50, 51, 52], turns=n)

    asyncio.run(turns(2))
    indexed = _metric(httpx.get(f"{url}/metrics").text, "llm_router_index_blocks")
    assert len(indexed) == 3
    victim = replica_actor_names(deployment)[0]
    victim_id = victim.rsplit("#", 1)[1]
    assert victim_id in indexed
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    def replaced() -> bool:
        live = {name.rsplit("#", 1)[1] for name in replica_actor_names(deployment)}
        blocks = _metric(httpx.get(f"{url}/metrics").text, "llm_router_index_blocks")
        return victim_id not in live and len(live) == 3 and set(blocks) == live

    wait_for(replaced, timeout_s=90, what="the dead replica replaced and gone from the router's index")
    # Every chat goes on; each one's later turns are cached wherever it now lives.
    chats = asyncio.run(turns(3))
    for usages in chats:
        assert usages[-1]["cached"] >= usages[-2]["prompt_tokens"] - 16, usages
