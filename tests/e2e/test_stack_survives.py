"""The real stack (vLLM on CPU) against bad input and a killed replica.

Runs last of the package on purpose: it kills the chat model's replica, and the stack is shared.
- Schemathesis, a smaller run than tests/contract's: the generation and embedding routes with
  fuzzed data, schema-valid and not, against a real tokenizer and engine (text that only a real
  tokenizer cannot take shows here). No server error, no undocumented status.
- The chat model's replica killed under 16 streams: every stream ends within the deadline with
  an in-band error or complete, requests meanwhile wait or get 503 with Retry-After, and the
  replacement serves.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import ray

from tests.contract.test_schemathesis import assert_clean, run_schemathesis
from tests.e2e.stack_support import CHAT, EMBED
from tests.integration.harness import model_deployment, replica_actor_names, running_replicas, wait_for

GENERATION_PATHS = r"^/(v1/(chat/completions|completions|embeddings|messages|messages/count_tokens)|api/(generate|chat|embed|embeddings))$"
STREAMS = 16


def test_schemathesis_on_the_real_engine_finds_no_server_error(stack: dict[str, Any]) -> None:
    result = run_schemathesis(
        stack["url"], {"generate": CHAT, "embed": EMBED}, key=None, examples=6, seed="20261202", workers=1,
        request_timeout_s=180,
        extra=("--include-path-regex", GENERATION_PATHS, "--phases=fuzzing",
               # This stack's models lack some capabilities a schema-valid body may ask for
               # (vision, thinking), so refusals of valid data are expected here; server errors,
               # undocumented statuses and malformed replies are not.
               "--exclude-checks=negative_data_rejection,positive_data_acceptance",
               # Speed is the benchmarks' business: a body without max_tokens runs to the
               # context's end on this CPU, past the check's default of 10 s.
               "--max-response-time=170"),
    )
    output, cases = assert_clean(result)
    print(f"\nschemathesis on vLLM: {cases} cases")
    assert cases >= 50


def _kill(deployment: str) -> None:
    for name in replica_actor_names(deployment):
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)


def test_chat_replica_killed_under_16_streams(stack: dict[str, Any]) -> None:
    url, deployment = stack["url"], model_deployment(stack["args"], CHAT)
    body = {"model": CHAT, "stream": True, "max_tokens": 2000, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell a long story."}]}

    async def one_stream(client: httpx.AsyncClient, started: asyncio.Event) -> tuple[str, float]:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        started.set()
                        if '"error"' in line and '"choices"' not in line:
                            return "error", time.monotonic()
                    elif line == "data: [DONE]":
                        return "done", time.monotonic()
        except httpx.HTTPError:
            return "cut", time.monotonic()
        return "cut", time.monotonic()

    async def main() -> tuple[list[tuple[str, float]], float, tuple[int, float, str | None]]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            events = [asyncio.Event() for _ in range(STREAMS)]
            streams = [asyncio.create_task(one_stream(client, e)) for e in events]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 120)
            killed_at = time.monotonic()
            await asyncio.to_thread(_kill, deployment)
            ended = await asyncio.wait_for(asyncio.gather(*streams), 120)
            sent = time.monotonic()
            reply = await client.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
            return list(ended), killed_at, (reply.status_code, time.monotonic() - sent, reply.headers.get("retry-after"))

    ended, killed_at, (status, waited_s, retry_after) = asyncio.run(main())
    outcomes = [o for o, _ in ended]
    last_s = max(at for _, at in ended) - killed_at
    print(f"\nvLLM replica kill: streams {dict((o, outcomes.count(o)) for o in set(outcomes))}, last ended "
          f"{last_s:.2f} s after the kill; a request in the gap: {status} after {waited_s:.1f} s")
    assert len(outcomes) == STREAMS and set(outcomes) <= {"error", "done"}, outcomes
    assert last_s < 60
    assert status == 200 or (status == 503 and retry_after is not None), status
    wait_for(lambda: running_replicas(deployment) == 1, 300, 1.0, "replacement vLLM replica")
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                       json={"model": CHAT, "max_tokens": 8, "temperature": 0,
                             "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert reply.status_code == 200 and "Paris" in reply.json()["choices"][0]["message"]["content"]

