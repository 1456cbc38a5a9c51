"""What the Responses API's state store costs: streamed ``responses.create`` beside chat
completions on the same engine, at one stream.

One stack (``serve run`` of the config, default ``config.yaml``: SmolLM2 on vLLM, CPU); three
kinds of request, interleaved in blocks so drift hits all alike:

- ``chat``: ``/v1/chat/completions``, streamed (the baseline, measured in the same run);
- ``responses``: ``/v1/responses`` streamed with ``store: false`` (the Responses path alone);
- ``responses+store``: the same with ``store: true`` (the default), written to the SQLite store
  before the last event.

Target: the store adds at most 5 ms to median time to first token at 1 stream (reported as the
difference and the ratio ``responses+store`` / ``chat``, with the engine's own speed beside it).
CPU-seconds per 1,000 output tokens per process role come from the process tree's counters
around each kind's blocks.

    .venv/bin/python -m benchmarks.responses [--config config.fake.yaml] [--requests 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.cpu_accounting import CpuMeter, cpu_between, per_thousand_tokens, totals
from benchmarks.loadgen import RequestRecord, openai_chunk_text, seeded_prompt
from benchmarks.servers import REPO, serve_stack
from benchmarks.stats import summarise
from tests.servers import free_port

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("chat", "responses", "responses+store")
TTFT_BUDGET_S = 0.005


def request_for(kind: str, model: str, prompt: str, max_tokens: int, seed: int) -> tuple[str, dict[str, Any]]:
    """The path and body of one streamed request of ``kind``."""
    if kind == "chat":
        return "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0.8, "seed": seed, "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    return "/v1/responses", {
        "model": model, "input": prompt, "stream": True, "max_output_tokens": max_tokens,
        "temperature": 0.8, "store": kind == "responses+store",
    }


async def one_request(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> RequestRecord:
    """Stream one request, noting when each text delta arrives (SSE, both APIs)."""
    record = RequestRecord(start=time.perf_counter())
    try:
        async with client.stream("POST", path, json=body) as response:
            record.status = response.status_code
            if response.status_code != 200:
                record.error = (await response.aread()).decode()[:200]
                return record
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    record.ok = True
                    continue
                frame = json.loads(payload)
                if "error" in frame:
                    record.error = str(frame["error"])[:200]
                    return record
                text = ""
                kind = frame.get("type")
                if kind == "response.output_text.delta":
                    text = frame["delta"]
                elif kind in ("response.completed", "response.incomplete"):
                    record.ok = True
                    record.reported_tokens = frame["response"]["usage"]["output_tokens"]
                elif kind is None:
                    text = openai_chunk_text(frame, record)
                if text:
                    record.add_token()
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        record.end = time.perf_counter()
    return record


async def measure(url: str, pid: int, model: str, requests: int, block: int, max_tokens: int) -> dict[str, Any]:
    """Every kind, ``requests`` each at one stream, interleaved in blocks of ``block``."""
    rng = random.Random(7)
    meter = CpuMeter(pid)
    records: dict[str, list[RequestRecord]] = {k: [] for k in KINDS}
    cpu: dict[str, dict[str, float]] = {k: {} for k in KINDS}
    wall: dict[str, float] = dict.fromkeys(KINDS, 0.0)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for kind in KINDS:  # one warm-up request per kind
            await one_request(client, *request_for(kind, model, seeded_prompt(rng, 16), max_tokens, 0))
        rounds = 0
        while min(len(r) for r in records.values()) < requests:
            order = KINDS if rounds % 2 == 0 else tuple(reversed(KINDS))
            for kind in order:
                before, started = meter.snapshot(), time.perf_counter()
                for _ in range(block):
                    seed = rng.randrange(1 << 30)
                    path, body = request_for(kind, model, seeded_prompt(rng, 16), max_tokens, seed)
                    records[kind].append(await one_request(client, path, body))
                wall[kind] += time.perf_counter() - started
                for role, seconds in cpu_between(before, meter.snapshot()).items():
                    cpu[kind][role] = cpu[kind].get(role, 0.0) + seconds
            rounds += 1
    result: dict[str, Any] = {}
    for kind in KINDS:
        summary = summarise(records[kind], wall[kind])
        per_k = per_thousand_tokens(cpu[kind], summary["output_tokens"])
        result[kind] = {"summary": summary, "cpu_per_1k": per_k, "cpu_totals_per_1k": totals(per_k)}
    return result


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the target is judged on."""
    ttft = {k: result[k]["summary"]["ttft_s"]["p50"] for k in KINDS}
    added = ttft["responses+store"] - ttft["chat"]
    return {
        "ttft_p50_ms": {k: round(v * 1000, 2) for k, v in ttft.items()},
        "store_adds_ms": round(added * 1000, 2),
        "store_alone_adds_ms": round((ttft["responses+store"] - ttft["responses"]) * 1000, 2),
        "ttft_ratio_store_over_chat": round(ttft["responses+store"] / ttft["chat"], 3),
        "engine_tokens_per_s_chat": round(result["chat"]["summary"]["output_tokens_per_s"], 1),
        "engine_tpot_p50_ms_chat": round((result["chat"]["summary"]["tpot_s"]["p50"] or 0) * 1000, 2),
        "met": added <= TTFT_BUDGET_S,
    }


def report(result: dict[str, Any], figures: dict[str, Any]) -> str:
    lines = [
        f"# Responses store benchmark ({result['config']}, {result['requests']} requests per kind, 1 stream)",
        "",
        f"Engine (chat): {figures['engine_tokens_per_s_chat']} tokens/s at 1 stream, "
        f"TPOT p50 {figures['engine_tpot_p50_ms_chat']} ms.",
        "",
        "| kind | TTFT p50 ms | TTFT p90 ms | tokens/s | CPU-s / 1k tokens outside the engine | engine |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        s = result["kinds"][kind]["summary"]
        t = result["kinds"][kind]["cpu_totals_per_1k"]
        lines.append(
            f"| {kind} | {s['ttft_s']['p50'] * 1000:.1f} | {s['ttft_s']['p90'] * 1000:.1f} | "
            f"{s['output_tokens_per_s']:.1f} | {t['all outside the engine']:.2f} | {t['engine']:.2f} |"
        )
    lines += [
        "",
        f"Store adds {figures['store_adds_ms']} ms to median TTFT over chat completions "
        f"(ratio {figures['ttft_ratio_store_over_chat']}; store alone over store: false "
        f"{figures['store_alone_adds_ms']} ms); target <= {TTFT_BUDGET_S * 1000:.0f} ms: "
        f"{'met' if figures['met'] else 'missed'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--requests", type=int, default=60, help="per kind")
    parser.add_argument("--block", type=int, default=10, help="requests of one kind in a row")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    folder = options.out / f"{datetime.now():%Y-%m-%d-%H%M}-responses"
    folder.mkdir(parents=True, exist_ok=True)
    with serve_stack(options.config, free_port(), folder / "stack.log") as server:
        kinds = asyncio.run(measure(server.url, server.pid, options.model, options.requests, options.block,
                                    options.max_tokens))
    result = {"config": options.config.name, "requests": options.requests, "kinds": kinds}
    figures = verdict(kinds)
    result["figures"] = figures
    (folder / "results.json").write_text(json.dumps(result, indent=2))
    text = report(result, figures)
    (folder / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
