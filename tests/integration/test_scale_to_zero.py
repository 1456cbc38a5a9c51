"""Scale to zero as Ollama users expect: listed while unloaded, loaded by the first request (one
load for many), a bounded wait while loading, keep_alive honoured, unloaded after idle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.integration.harness import (
    deployed,
    model_deployment,
    replica_actor_names,
    running_replicas,
    wait_for,
)

pytestmark = pytest.mark.ray

KEEP_ALIVE_S = 10  # long enough that no check below races the unload on a slow machine
MAX_KEEP_ALIVE_S = 30


def _on_demand(name: str, startup_s: float, scale_to_zero: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "fake",
        "engine_args": {"token_interval_s": 0.01, "output_tokens": 8, "startup_delay_s": startup_s},
        "deployment": {
            "autoscaling_config": {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 32,
                                   "upscale_delay_s": 0, "downscale_delay_s": 0},
            "max_ongoing_requests": 64,
            "graceful_shutdown_timeout_s": 5,
            "ray_actor_options": {"num_cpus": 0.1},
        },
        "scale_to_zero": scale_to_zero,
    }


ARGS: dict[str, Any] = {
    "models": [
        _on_demand("cold:1", 2.0, {"keep_alive_s": KEEP_ALIVE_S, "max_keep_alive_s": MAX_KEEP_ALIVE_S,
                                   "load_timeout_s": 120, "load_queue_limit": 32}),
        _on_demand("slow:1", 30.0, {"keep_alive_s": 60, "load_timeout_s": 3, "load_queue_limit": 3}),
        {"name": "warm:1", "engine": "fake", "deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
    ],
    "ingress": {"deployment": {"ray_actor_options": {"num_cpus": 0.1}}},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with deployed(ARGS) as base_url:
        yield base_url


def _tags(url: str) -> dict[str, str]:
    return {m["name"]: m["state"] for m in httpx.get(f"{url}/api/tags").json()["models"]}


def _ps(url: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(f"{url}/api/ps").json()["models"]}


def _expires(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["expires_at"][:26] + "+00:00").timestamp()


def _replicas(model: str) -> int:
    return running_replicas(model_deployment(ARGS, model))


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def test_an_unloaded_model_is_listed_and_twenty_first_requests_share_one_load(url: str) -> None:
    assert _tags(url)["cold:1"] == "unloaded"
    assert "cold:1" in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert "cold:1" not in _ps(url) and "warm:1" in _ps(url)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=_chat("cold:1")) for _ in range(20)))

    sent_at = time.time()
    responses = asyncio.run(burst())
    answered_at = time.time()
    assert [r.status_code for r in responses] == [200] * 20, [r.text for r in responses if r.status_code != 200]
    assert _tags(url)["cold:1"] == "ready"
    assert all(r.json()["choices"][0]["message"]["content"] for r in responses)
    # One load: one replica was ever started for the twenty.
    assert len(replica_actor_names(model_deployment(ARGS, "cold:1"))) == 1
    wait_for(lambda: "cold:1" in _ps(url), timeout_s=15, what="cold:1 in /api/ps")
    # Idle from the last answer on: the deadline is keep_alive after it (timestamps around the
    # burst, not the time of this check, so a slow machine cannot move the window).
    expires = _expires(_ps(url)["cold:1"])
    assert sent_at + KEEP_ALIVE_S - 1 <= expires <= answered_at + KEEP_ALIVE_S + 1


def test_it_unloads_after_its_keep_alive(url: str) -> None:
    wait_for(lambda: _replicas("cold:1") == 0, timeout_s=60, what="cold:1 scaled to zero after idle")
    wait_for(lambda: _tags(url)["cold:1"] == "unloaded" and "cold:1" not in _ps(url), timeout_s=15,
             what="cold:1 shown unloaded")
    assert _replicas("warm:1") == 1  # a model without min_replicas 0 stays


def test_ollama_load_keep_alive_within_limits_and_unload(url: str) -> None:
    wait_for(lambda: _replicas("cold:1") == 0, timeout_s=60, what="cold:1 unloaded before the test")
    # No prompt: the model loads and Ollama's reply says so; a long keep_alive is capped.
    asked_at = time.time()
    load = httpx.post(f"{url}/api/generate", json={"model": "cold:1", "keep_alive": "2h"}, timeout=120)
    loaded_at = time.time()
    assert load.status_code == 200 and load.json()["done_reason"] == "load", load.text
    assert _replicas("cold:1") == 1
    expires = _expires(_ps(url)["cold:1"])
    assert asked_at + MAX_KEEP_ALIVE_S - 1 <= expires <= loaded_at + MAX_KEEP_ALIVE_S + 1
    # Past its default keep_alive it is still loaded: the request asked for longer.
    time.sleep(KEEP_ALIVE_S + 3)
    assert _replicas("cold:1") == 1
    unload = httpx.post(f"{url}/api/chat", json={"model": "cold:1", "messages": [], "keep_alive": 0}, timeout=30)
    assert unload.status_code == 200 and unload.json()["done_reason"] == "unload", unload.text
    wait_for(lambda: _replicas("cold:1") == 0, timeout_s=30, what="cold:1 unloaded by keep_alive 0")
    # Unloading a model that is not loaded does not load it.
    again = httpx.post(f"{url}/api/generate", json={"model": "cold:1", "keep_alive": 0}, timeout=30)
    assert again.json()["done_reason"] == "unload"
    time.sleep(3)
    assert _replicas("cold:1") == 0
    bad = httpx.post(f"{url}/api/generate", json={"model": "cold:1", "keep_alive": "soon"}, timeout=30)
    assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]


def test_a_full_load_queue_and_a_slow_load_answer_503_then_the_model_serves(url: str) -> None:
    assert _tags(url)["slow:1"] == "unloaded"

    async def cold_burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            openai = [client.post("/v1/chat/completions", json=_chat("slow:1")) for _ in range(5)]
            ollama = client.post("/api/chat", json={**_chat("slow:1"), "stream": False})
            return await asyncio.gather(*openai, ollama)

    started = time.monotonic()
    responses = asyncio.run(cold_burst())
    assert all(r.status_code == 503 for r in responses), [(r.status_code, r.text) for r in responses]
    assert all(r.headers.get("retry-after") for r in responses)
    messages = [r.json()["error"]["message"] for r in responses[:5]]
    # Three waited their load timeout; the others found the queue full at once.
    assert sum("did not finish loading" in m for m in messages) + sum("already wait" in m for m in messages) == 5
    assert sum("already wait" in m for m in messages) >= 2
    assert isinstance(responses[5].json()["error"], str)  # Ollama's shape
    assert time.monotonic() - started < 20  # nobody waited for the whole 30 s load
    # The load went on: once it is done, the model serves.
    wait_for(lambda: _replicas("slow:1") == 1, timeout_s=90, what="slow:1 loaded")
    served = httpx.post(f"{url}/v1/chat/completions", json=_chat("slow:1"), timeout=60)
    assert served.status_code == 200, served.text
