"""An async load generator with real streaming clients (SSE and NDJSON over httpx).

Three streamed chat APIs: OpenAI's chat completions, Ollama's chat and Anthropic's messages.

Per request it records time to first token, the arrival time of every streamed token and the
end; per run it derives requests/s, output tokens/s, goodput and percentiles. Two modes: a fixed
number of concurrent streams, or a Poisson request rate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

Api = Literal["openai", "ollama", "anthropic", "openai-embeddings"]
CHAT_PATHS = {"openai": "/v1/chat/completions", "ollama": "/api/chat", "anthropic": "/v1/messages"}

WORDS = (
    "river mountain quiet engine window garden silver letter morning signal paper orbit harbor "
    "candle forest number bridge winter market pocket planet violin marble thunder lantern"
).split()


def seeded_prompt(rng: random.Random, words: int) -> str:
    """A prompt of ``words`` words drawn from a fixed vocabulary (reproducible with the seed)."""
    return "Summarise: " + " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass
class RequestRecord:
    """What one request saw."""

    start: float
    first_token: float | None = None
    token_times: list[float] = field(default_factory=list)
    end: float = 0.0
    output_tokens: int = 0  # streamed frames that carried text
    reported_tokens: int | None = None  # the server's own count (usage / eval_count), when sent
    ok: bool = False
    status: int = 0
    error: str = ""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first."""
        if self.first_token is None or self.output_tokens < 2:
            return None
        return (self.end - self.first_token) / (self.output_tokens - 1)

    def add_token(self) -> None:
        """A streamed frame carrying output arrived now."""
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
        self.token_times.append(now)
        self.output_tokens += 1

    def inter_token_latencies(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:], strict=False)]


def _chat_body(api: Api, model: str, prompt: str, max_tokens: int, seed: int) -> dict[str, Any]:
    if api == "anthropic":
        # Anthropic's API has neither seed nor ignore_eos: the model's own end decides the length.
        return {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.8,
                "messages": [{"role": "user", "content": prompt}]}
    if api == "ollama":
        return {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "options": {"num_predict": max_tokens, "temperature": 0.8, "seed": seed},
        }
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }


def openai_chunk_text(frame: dict[str, Any], record: RequestRecord) -> str:
    """The text a ``chat.completion.chunk`` carries (noting the usage chunk's count)."""
    if frame.get("usage"):
        record.reported_tokens = frame["usage"].get("completion_tokens")
    choices = frame.get("choices") or []
    return (choices[0].get("delta", {}).get("content") or "") if choices else ""


def anthropic_event_text(event: dict[str, Any], record: RequestRecord) -> str:
    """The text one Messages API event carries (noting the end and the server's token count)."""
    kind = event.get("type")
    if kind == "content_block_delta":
        return event["delta"].get("text") or ""
    if kind == "message_delta":
        record.reported_tokens = event.get("usage", {}).get("output_tokens")
    elif kind == "message_stop":
        record.ok = True
    elif kind == "error":
        record.error = str(event.get("error"))
    return ""


async def _one_chat(client: httpx.AsyncClient, api: Api, body: dict[str, Any]) -> RequestRecord:
    record = RequestRecord(start=time.perf_counter())
    path = CHAT_PATHS[api]
    try:
        async with client.stream("POST", path, json=body) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = (await response.aread()).decode()[:200]
                return record
            async for line in response.aiter_lines():
                if not line:
                    continue
                if api == "ollama":
                    frame = json.loads(line)
                    if "error" in frame:
                        record.error = frame["error"]
                        return record
                    if frame.get("done"):
                        record.ok = True
                        record.reported_tokens = frame.get("eval_count")
                        continue
                    text = frame.get("message", {}).get("content", "")
                elif api == "anthropic":
                    if not line.startswith("data: "):
                        continue  # the "event:" line repeats the data's type
                    text = anthropic_event_text(json.loads(line[6:]), record)
                    if record.error:
                        return record
                else:
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    if payload == "[DONE]":
                        record.ok = True
                        continue
                    frame = json.loads(payload)
                    if "error" in frame:
                        record.error = str(frame["error"])
                        return record
                    text = openai_chunk_text(frame, record)
                if text:
                    record.add_token()
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end = time.perf_counter()
    return record


async def _one_embedding(client: httpx.AsyncClient, model: str, inputs: list[str]) -> RequestRecord:
    record = RequestRecord(start=time.perf_counter())
    try:
        response = await client.post("/v1/embeddings", json={"model": model, "input": inputs})
        record.status = response.status_code
        record.ok = response.status_code == 200
        if record.ok:
            record.output_tokens = len(response.json()["data"])
            record.first_token = time.perf_counter()
        else:
            record.error = response.text[:200]
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.end = time.perf_counter()
    return record


@dataclass
class Workload:
    """What each request asks for."""

    name: str
    api: Api
    model: str
    prompt_words: int = 16
    max_tokens: int = 64
    embedding_batch: int = 32
    # Request i asks for models[i % len(models)] instead of ``model`` (adapters mixed in one load).
    models: tuple[str, ...] = ()

    def model_of(self, i: int) -> str:
        return self.models[i % len(self.models)] if self.models else self.model


async def run_load(
    base_url: str,
    workload: Workload,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    num_requests: int,
    seed: int = 0,
    on_done: Callable[[], None] | None = None,
    timeout_s: float = 600,
) -> tuple[list[RequestRecord], float]:
    """Run ``num_requests`` at fixed ``concurrency`` or Poisson ``rate``; returns records and wall time."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=(concurrency or 256) + 8, max_keepalive_connections=(concurrency or 256) + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def one(i: int) -> RequestRecord:
            if workload.api == "openai-embeddings":
                inputs = [seeded_prompt(rng, workload.prompt_words) for _ in range(workload.embedding_batch)]
                record = await _one_embedding(client, workload.model, inputs)
            else:
                body = _chat_body(workload.api, workload.model_of(i), seeded_prompt(rng, workload.prompt_words), workload.max_tokens, seed * 100_000 + i)
                record = await _one_chat(client, workload.api, body)
            if on_done:
                on_done()
            return record

        started = time.perf_counter()
        if rate is not None:
            tasks = []
            for i in range(num_requests):
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(rng.expovariate(rate))
            records = list(await asyncio.gather(*tasks))
        else:
            queue = list(range(num_requests))
            records = []

            async def worker() -> None:
                while queue:
                    records.append(await one(queue.pop()))

            await asyncio.gather(*(worker() for _ in range(concurrency or 1)))
        return records, time.perf_counter() - started
