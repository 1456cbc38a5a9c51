"""Chaos on Ray: replicas, the ingress and the Serve controller killed under load; slow, huge
and oversized clients. Each test prints its figures (tests/README.md keeps the measured ones).

Everything runs through Serve's HTTP front (HAProxy), as clients reach a deployed stack.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import ray

from tests.integration.harness import (
    deploy,
    local_ray,
    model_deployment,
    replica_actor_names,
    running_replicas,
    wait_for,
)

pytestmark = pytest.mark.ray

STREAMS = 16
DEADLINE_S = 30
BODY_TIMEOUT_S = 4


def _model(name: str, engine_args: dict[str, Any], **deployment: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "fake",
        "engine_args": engine_args,
        "deployment": {"num_replicas": 1, "max_ongoing_requests": 64, "health_check_period_s": 1,
                       "graceful_shutdown_timeout_s": 2, "ray_actor_options": {"num_cpus": 0.1}, **deployment},
    }


ARGS: dict[str, Any] = {
    "models": [
        # 100 tokens at 40 ms: 4 s streams, long enough to kill something under them.
        _model("victim:1", {"token_interval_s": 0.04, "output_tokens": 100}),
        _model("steady:1", {"token_interval_s": 0.04, "output_tokens": 100}),
        {"name": "embed:1", "kind": "embed", "engine": "fake", "embedding_dimensions": 384,
         "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}},
    ],
    "ingress": {
        "settings": {"request_deadline_s": DEADLINE_S, "body_timeout_s": BODY_TIMEOUT_S,
                     "limits": {"max_prompt_chars": 10_000_000}},
        "deployment": {"health_check_period_s": 1, "ray_actor_options": {"num_cpus": 0.1}},
    },
    "retry_after_s": 2,
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with local_ray(num_cpus=8) as port:
        deploy(ARGS)
        yield f"http://127.0.0.1:{port}"


def _chat(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **extra}


async def _stream(client: httpx.AsyncClient, model: str, started: asyncio.Event) -> tuple[str, float]:
    """One stream's outcome (``done``, ``error`` in-band, or ``cut``) and when it ended."""
    try:
        async with client.stream("POST", "/v1/chat/completions", json=_chat(model, stream=True)) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    started.set()
                    if '"error"' in line and "choices" not in line:
                        return "error", time.monotonic()
                elif line == "data: [DONE]":
                    return "done", time.monotonic()
    except httpx.HTTPError:
        return "cut", time.monotonic()
    return "cut", time.monotonic()


def _kill_replica(deployment: str) -> list[str]:
    names = replica_actor_names(deployment)
    for name in names:
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return names


def test_llm_replica_killed_under_16_streams(url: str) -> None:
    deployment = model_deployment(ARGS, "victim:1")

    async def main() -> tuple[list[tuple[str, float]], float, list[tuple[int, float, str | None]]]:
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S + 30) as client:
            events = [asyncio.Event() for _ in range(STREAMS)]
            streams = [asyncio.create_task(_stream(client, "victim:1", e)) for e in events]
            await asyncio.gather(*(e.wait() for e in events))
            killed_at = time.monotonic()
            await asyncio.to_thread(_kill_replica, deployment)

            async def gap_request() -> tuple[int, float, str | None]:
                sent = time.monotonic()
                reply = await client.post("/v1/chat/completions", json=_chat("victim:1", max_tokens=3))
                return reply.status_code, time.monotonic() - sent, reply.headers.get("retry-after")

            gap = [asyncio.create_task(gap_request()) for _ in range(4)]
            ended = await asyncio.wait_for(asyncio.gather(*streams), DEADLINE_S + 10)
            return list(ended), killed_at, list(await asyncio.wait_for(asyncio.gather(*gap), DEADLINE_S + 30))

    ended, killed_at, gap = asyncio.run(main())
    outcomes = [outcome for outcome, _ in ended]
    last_end_s = max(at for _, at in ended) - killed_at
    print(f"\nreplica kill: streams {dict((o, outcomes.count(o)) for o in set(outcomes))}, "
          f"last ended {last_end_s:.2f} s after the kill; requests in the gap {gap}")
    # Every stream ended, with its in-band error or complete, and well within the deadline.
    assert len(ended) == STREAMS and set(outcomes) <= {"error", "done"}, outcomes
    assert last_end_s < DEADLINE_S
    # Requests sent into the gap waited for the replacement or were told when to retry.
    for status, _, retry_after in gap:
        assert status == 200 or (status == 503 and retry_after is not None), gap
    wait_for(lambda: running_replicas(deployment) == 1, 60, 0.5, "replacement replica")
    for _ in range(3):
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat("victim:1", max_tokens=3), timeout=60)
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 "


def _ingress_deployment() -> str:
    names = ray.util.list_named_actors(all_namespaces=True)
    for actor in names:
        name = actor["name"]
        if actor["namespace"] == "serve" and name.startswith("SERVE_REPLICA::llm#") and "LLMServer" not in name:
            deployment = name.split("#")[1]
            if deployment.lower().startswith("ingress"):
                return deployment
    raise AssertionError(f"no ingress replica among {names}")


def test_ingress_replica_killed_under_load(url: str) -> None:
    ingress = _ingress_deployment()
    before = replica_actor_names(ingress)

    async def main() -> tuple[list[str], float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            events = [asyncio.Event() for _ in range(8)]
            streams = [asyncio.create_task(_stream(client, "steady:1", e)) for e in events]
            await asyncio.gather(*(e.wait() for e in events))
            killed_at = time.monotonic()
            await asyncio.to_thread(_kill_replica, ingress)
            outcomes = [o for o, _ in await asyncio.gather(*streams)]
            while True:
                try:
                    reply = await client.post("/v1/chat/completions", json=_chat("steady:1", max_tokens=3), timeout=30)
                    if reply.status_code == 200:
                        return outcomes, time.monotonic() - killed_at
                except httpx.HTTPError:
                    pass
                assert time.monotonic() - killed_at < 90, "no request served after the ingress was killed"
                await asyncio.sleep(0.25)

    outcomes, recovered_s = asyncio.run(main())
    print(f"\ningress kill: streams {dict((o, outcomes.count(o)) for o in set(outcomes))}, "
          f"first request served {recovered_s:.1f} s after the kill")
    # Streams on the killed replica are cut (the connection closes); none hangs.
    assert len(outcomes) == 8
    after = replica_actor_names(ingress)
    assert after and not set(after) & set(before)


def _kill_controller() -> None:
    """Kill Serve's controller as a crash would; Ray restarts it (it is a detached actor with
    unlimited restarts)."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=False)


def test_serve_controller_killed_traffic_keeps_flowing(url: str) -> None:
    async def main() -> tuple[list[str], list[tuple[float, int, float]]]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            events = [asyncio.Event() for _ in range(STREAMS)]
            streams = [asyncio.create_task(_stream(client, "steady:1", e)) for e in events]
            await asyncio.gather(*(e.wait() for e in events))
            await asyncio.to_thread(_kill_controller)
            killed_at = time.monotonic()
            probes: list[tuple[float, int, float]] = []
            for offset in (0.5, 1.0, 2.0, 5.0):
                await asyncio.sleep(max(0.0, killed_at + offset - time.monotonic()))
                for path, body in (("/v1/chat/completions", _chat("steady:1", max_tokens=3)), ("/v1/models", None)):
                    sent = time.monotonic()
                    reply = await (client.post(path, json=body) if body else client.get(path))
                    probes.append((offset, reply.status_code, time.monotonic() - sent))
            return [o for o, _ in await asyncio.gather(*streams)], probes

    outcomes, probes = asyncio.run(main())
    print(f"\ncontroller kill: streams {dict((o, outcomes.count(o)) for o in set(outcomes))}; "
          f"(s after kill, status, s taken): {[(o, s, round(t, 2)) for o, s, t in probes]}")
    # Every stream completed, and every request during the restart was served.
    assert outcomes == ["done"] * STREAMS
    assert all(status == 200 for _, status, _ in probes), probes


def test_a_slow_body_does_not_slow_others_and_times_out(url: str) -> None:
    body = json.dumps(_chat("steady:1", max_tokens=3)).encode()
    parts = urlsplit(url)
    outcome: dict[str, Any] = {}

    def slow_client() -> None:
        started = time.monotonic()
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode())
            reply = b""
            for byte in body:
                sock.settimeout(1.0)
                try:
                    reply = sock.recv(65536)
                except TimeoutError:
                    reply = b""
                if reply:
                    break
                sock.sendall(bytes([byte]))
        outcome["status"] = int(reply.split(b" ", 2)[1]) if reply else None
        outcome["took"] = time.monotonic() - started

    slow = threading.Thread(target=slow_client)
    slow.start()
    time.sleep(0.5)
    for _ in range(5):
        reply = httpx.post(f"{url}/v1/chat/completions", json=_chat("steady:1", max_tokens=3), timeout=30)
        assert reply.status_code == 200
    # The others were all served while the slow upload went on.
    assert slow.is_alive()
    slow.join(60)
    print(f"\nslow body: answered {outcome['status']} after {outcome['took']:.1f} s")
    assert outcome["status"] == 408 and outcome["took"] < BODY_TIMEOUT_S + 10


@pytest.mark.parametrize("headers", [{f"x-h{i}": "1" for i in range(1000)}, {"x-big": "a" * 100_000}],
                         ids=["1000-headers", "100kb-header"])
def test_oversized_headers_are_refused(url: str, headers: dict[str, str]) -> None:
    reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    # HAProxy in front answers 400 past its buffer; the ingress itself answers 431.
    assert reply.status_code in (400, 431), reply.status_code
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200


def test_large_bodies_cross_every_hop(url: str) -> None:
    # A 6 MB prompt: more than gRPC's default 4 MiB between the ingress and the model replica.
    big = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                     json={"model": "steady:1", "max_tokens": 2, "messages": [{"role": "user", "content": "x" * 6_000_000}]})
    assert big.status_code == 200, big.text[:500]
    # 2,048 embeddings: about 8 MB of reply, back through the same hops.
    reply = httpx.post(f"{url}/v1/embeddings", json={"model": "embed:1", "input": ["hello world"] * 2048}, timeout=120)
    assert reply.status_code == 200, reply.text[:500]
    data = reply.json()["data"]
    assert len(data) == 2048 and [d["index"] for d in data] == list(range(2048)) and len(data[0]["embedding"]) == 384
