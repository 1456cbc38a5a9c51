"""LoRA adapters through the Ray Serve graph, on the fake engine (which models loads, capacity
and eviction): loaded on first use by the base model's replicas, once however many ask, evicted
least recently used, routed to the replica holding them (Serve's model multiplexing), and a
failing adapter leaves the base serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.serve._private.common import DeploymentID
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

from tests.integration.harness import deployed, model_deployment

pytestmark = pytest.mark.ray

ONE = "lora-one:1"  # one replica: loads, capacity, failures
TWO = "lora-two:1"  # two replicas, Serve's power of two choices: routing to the holder
THREE = "lora-three:1"  # two replicas, the cache-aware router
USER = [{"role": "user", "content": "Say hi."}]


def _adapter(folder: Path, rank: int = 8) -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "target_modules": ["q_proj", "v_proj"]}))


def _args(adapters: Path) -> dict[str, Any]:
    for name in ("a", "b", "c", "d"):
        _adapter(adapters / name)
    _adapter(adapters / "wide", rank=64)

    def model(name: str, replicas: int, router: str) -> dict[str, Any]:
        return {
            "name": name, "engine": "fake", "engine_args": {"adapter_load_s": 0.5, "output_tokens": 4},
            "adapter_folder": str(adapters), "lora": {"max_loras": 2},
            "adapters": [{"name": f"{name.split(':')[0]}-listed:1", "source": f"local:{adapters / 'a'}"}],
            "deployment": {"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0.1}},
            "routing": {"policy": router},
        }

    return {
        "models": [model(ONE, 1, "cache_aware"), model(TWO, 2, "serve_default"), model(THREE, 2, "cache_aware")],
        "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    args = _args(tmp_path_factory.mktemp("adapters"))
    with deployed(args) as url:
        yield url, args


def _stats(args: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """Every replica's engine counters (``adapters_held``, ``adapter_loads``)."""
    handle = serve.get_deployment_handle(model_deployment(args, model), app_name="llm")
    stats: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    # Serve picks a replica per call: call until every replica has answered.
    replicas = 1 if model == ONE else 2
    while len(stats) < replicas and time.monotonic() < deadline:
        one = handle.engine_stats.remote().result(timeout_s=30)
        stats[one["replica"]] = one
    return list(stats.values())


async def _until_the_routers_know(args: dict[str, Any], model: str, held: set[str]) -> None:
    """Wait until Serve's controller has the replicas' reports of holding ``held`` (they report
    every 0.1 s), then for its broadcast to the ingress's router (its next control loop, ~0.1 s)."""
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    deployment = DeploymentID(name=model_deployment(args, model), app_name="llm")
    deadline = time.monotonic() + 30
    while True:
        # A test-only view of Serve's controller (ray.serve._private.test_utils reads it too).
        replicas = await controller._dump_replica_states_for_testing.remote(deployment)
        known = {i for replica in replicas.get() for i in replica.multiplexed_model_ids}
        if held <= known:
            break
        assert time.monotonic() < deadline, f"the controller knows {sorted(known)}, not {sorted(held)}"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


async def _chat(client: httpx.AsyncClient, model: str, text: str = "Say hi.") -> httpx.Response:
    return await client.post("/v1/chat/completions", json={
        "model": model, "max_tokens": 2, "messages": [{"role": "user", "content": text}]})


def test_twenty_first_requests_load_the_adapter_once_and_each_answers_as_it(stack: tuple[str, dict[str, Any]]) -> None:
    url, args = stack

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(_chat(client, f"{ONE}:b") for _ in range(20)))

    replies = asyncio.run(main())
    assert [r.status_code for r in replies] == [200] * 20
    assert all(r.json()["choices"][0]["message"]["content"].startswith("b-tok0") for r in replies)
    assert all(r.json()["model"] == f"{ONE}:b" for r in replies)
    (stats,) = _stats(args, ONE)
    assert stats["adapter_loads"] == 1 and stats["adapters_held"] == [f"{ONE}:b"]


def test_the_base_replicas_say_which_folder_adapters_exist_without_loading_them(stack: tuple[str, dict[str, Any]]) -> None:
    url, args = stack
    (before,) = _stats(args, ONE)
    shown = httpx.post(f"{url}/api/show", json={"model": f"{ONE}:d"}, timeout=60)
    retrieved = httpx.get(f"{url}/v1/models/{ONE}:a", timeout=60)
    missing = httpx.post(f"{url}/api/show", json={"model": f"{ONE}:nosuch"}, timeout=60)
    assert shown.status_code == 200 and shown.json()["details"]["parent_model"] == ONE
    assert retrieved.status_code == 200 and retrieved.json()["parent"] == ONE
    assert missing.status_code == 404 and f"{ONE}:nosuch" in missing.json()["error"]
    (after,) = _stats(args, ONE)
    assert after["adapter_loads"] == before["adapter_loads"]


def test_adapters_beyond_the_limit_are_evicted_least_recently_used(stack: tuple[str, dict[str, Any]]) -> None:
    url, args = stack

    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for model in (f"{ONE}:c", f"{ONE}:d", "lora-one-listed:1", f"{ONE}:d"):
                reply = await _chat(client, model)
                assert reply.status_code == 200, reply.text

    (before,) = _stats(args, ONE)
    asyncio.run(main())
    (after,) = _stats(args, ONE)
    # max_loras 2: c, d, then listed evicts c; d is used again.
    assert after["adapters_held"] == ["lora-one-listed:1", f"{ONE}:d"]
    assert after["adapter_loads"] - before["adapter_loads"] == 3


def test_a_failing_adapter_is_a_400_naming_it_and_the_base_serves_on(stack: tuple[str, dict[str, Any]]) -> None:
    url, _ = stack

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            wide = await _chat(client, f"{ONE}:wide")
            missing = await _chat(client, f"{ONE}:nosuch")
            ollama = await client.post("/api/chat", json={"model": f"{ONE}:wide", "messages": USER, "stream": False})
            base = await _chat(client, ONE)
            return wide, missing, ollama, base

    wide, missing, ollama, base = asyncio.run(main())
    assert wide.status_code == 400 and wide.json()["error"]["code"] == "adapter_load_failed"
    assert f"{ONE}:wide" in wide.json()["error"]["message"] and "rank 64" in wide.json()["error"]["message"]
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert ollama.status_code == 400 and f"{ONE}:wide" in ollama.json()["error"]
    assert base.status_code == 200 and base.json()["choices"][0]["message"]["content"].startswith("tok0")


def test_an_adapters_requests_go_to_the_replica_holding_it(stack: tuple[str, dict[str, Any]]) -> None:
    """On Serve's random router, 12 requests for two adapters would reach both replicas (and
    load each adapter twice) but for the multiplexed model id each carries."""
    url, args = stack

    async def main() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            for adapter in ("a", "b"):
                first = await _chat(client, f"{TWO}:{adapter}", "first")
                assert first.status_code == 200
            await _until_the_routers_know(args, TWO, {f"{TWO}:a", f"{TWO}:b"})
            for i in range(12):
                # Prompts share no prefix, so prefix affinity cannot explain where they land.
                reply = await _chat(client, f"{TWO}:{'ab'[i % 2]}", f"{i} " * (i + 1))
                assert reply.status_code == 200

    asyncio.run(main())
    stats = _stats(args, TWO)
    assert sum(s["adapter_loads"] for s in stats) == 2, stats  # each adapter loaded once, on one replica
    assert sorted(a for s in stats for a in s["adapters_held"]) == [f"{TWO}:a", f"{TWO}:b"]


def test_the_cache_aware_router_ranks_among_the_replicas_holding_the_adapter(stack: tuple[str, dict[str, Any]]) -> None:
    url, args = stack

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            first = await _chat(client, f"{THREE}:c", "first")
            await _until_the_routers_know(args, THREE, {f"{THREE}:c"})
            return [first, *await asyncio.gather(*(_chat(client, f"{THREE}:c", f"{i} " * (i + 1)) for i in range(8)))]

    replies = asyncio.run(main())
    assert [r.status_code for r in replies] == [200] * 9
    assert all(r.json()["choices"][0]["message"]["content"].startswith("c-tok0") for r in replies)
    assert sum(s["adapter_loads"] for s in _stats(args, THREE)) == 1
