"""Usage lines are never lost: each reaches the replica's log at once, even in Serve's
throughput-optimised mode (which buffers request-path logs per 1,000), and a killed ingress
replica loses none of the requests it completed.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from tests.integration.harness import deploy, local_ray, replica_actor_names, wait_for

pytestmark = pytest.mark.ray

ARGS: dict[str, Any] = {
    "models": [{
        "name": "paced:1",
        "engine": "fake",
        "engine_args": {"token_interval_s": 0.01, "output_tokens": 20},
        "deployment": {"num_replicas": 1, "max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.1}},
    }],
    "ingress": {"deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}},
}
USAGE = re.compile(r'\{"event":"usage".*\}')


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with local_ray() as port:
        deploy(ARGS)
        yield f"http://127.0.0.1:{port}"


def serve_logs_dir() -> Path:
    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"


def logged_usage() -> dict[str, dict[str, Any]]:
    """Every usage line in every ingress replica's log so far, by request id."""
    lines: dict[str, dict[str, Any]] = {}
    for log in serve_logs_dir().glob("replica_*Ingress*.log"):
        for match in USAGE.finditer(log.read_text(errors="replace")):
            record = json.loads(match.group(0))
            lines[record["request_id"]] = record
    return lines


async def one_chat(client: httpx.AsyncClient, request_id: str) -> bool:
    """A streamed chat with our request id; True when it ended with [DONE]."""
    body = {"model": "paced:1", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as reply:
            async for line in reply.aiter_lines():
                if line == "data: [DONE]":
                    return True
    except httpx.HTTPError:
        pass
    return False


def test_a_usage_line_is_in_the_log_without_waiting_for_a_buffer(url: str) -> None:
    request_id = f"prompt-{time.time_ns()}"
    response = httpx.post(f"{url}/v1/chat/completions", headers={"x-request-id": request_id},
                          json={"model": "paced:1", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert response.status_code == 200
    # A buffered handler (Serve's MemoryHandler flushes at 1,000 records) would never show one line;
    # the wait only allows for a loaded machine.
    wait_for(lambda: request_id in logged_usage(), 15, 0.1, "the usage line in the replica's log")
    line = logged_usage()[request_id]
    assert line["model"] == "paced:1" and line["completion_tokens"] == 20 and line["outcome"] == "ok"


def test_killed_ingress_replica_loses_no_completed_request(url: str) -> None:
    completed: dict[str, float] = {}  # request id -> when the client saw [DONE]

    async def stream_forever(client: httpx.AsyncClient, worker: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            request_id = f"kill-{worker}-{n}"
            n += 1
            if await one_chat(client, request_id):
                completed[request_id] = time.monotonic()

    async def main() -> float:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            workers = [asyncio.create_task(stream_forever(client, w, stop)) for w in range(8)]
            while len(completed) < 60:  # a few seconds of steady load
                await asyncio.sleep(0.1)
            (name,) = replica_actor_names("Ingress")
            killed_at = time.monotonic()
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
            return killed_at

    killed_at = asyncio.run(main())
    # Completed before the kill, with a margin for the line written just after the last byte.
    before_kill = [rid for rid, at in completed.items() if at < killed_at - 1.0]
    assert len(before_kill) >= 20
    logged = logged_usage()
    missing = [rid for rid in before_kill if rid not in logged]
    assert missing == [], f"{len(missing)} of {len(before_kill)} usage lines lost"
    assert all(logged[rid]["outcome"] == "ok" for rid in before_kill)
    # Serve replaces the replica and serves again.
    wait_for(lambda: httpx.get(f"{url}/health", timeout=5).status_code == 200, 120, 1.0, "a new ingress replica")
