"""Routing across replicas, real vLLM on CPU: our cache-aware router against Serve's and Ray's.

    python -m benchmarks.routing                          # ours against Serve's router (~15 min, 2 cores)
    python -m benchmarks.routing --policies ours,ray      # against Ray's PrefixCacheAffinityRouter
    python -m benchmarks.routing --policies ours,ray-t8   # the same with a finite imbalanced_threshold
    python -m benchmarks.routing --micro    # the routing decision's own cost, in-process

One ``serve run`` holds a copy of the default model per policy compared (ours is always one, so
every comparison has its baseline measured in the same run), three replicas each, with small KV
caches (``--kv-tokens`` per replica) so prefixes compete for cache; each copy is routed by one
policy: ``ours`` (cache_aware), ``serve`` (Serve's power of two choices), ``ray`` (Ray's
``PrefixCacheAffinityRouter`` as shipped) and ``ray-t8`` (the same with a finite
``imbalanced_threshold``). Every cell runs the same seeded requests on each copy in turn, the
order alternating, each cell with fresh prefixes:

- ``grouped`` at rising Poisson rates: groups of ~1,000-token shared system prompts, sized to
  fill ~70 % of the copies' total KV cache, each request a unique 64-128-token question;
- ``none``: nothing shared (every prompt unique, same length);
- ``one``: a single prefix shared by every request.

Per cell: output tokens/s, TTFT p50/p90, errors, the engines' own prefix-cache hit rate (their
counters, as the replicas report them on ``/metrics``), busiest/average routed requests per
replica, and CPU-seconds per 1,000 output tokens of the whole stack. The engine's own speed
(uncached and cached prefill, decode) is measured first, at idle, and stated beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from benchmarks import servers
from benchmarks.cpu_accounting import CpuMeter, cpu_between, totals
from benchmarks.loadgen import WORDS, RequestRecord, _one_chat
from benchmarks.stats import summarise

RESULTS = Path(__file__).resolve().parent / "results"
POLICIES: dict[str, dict[str, Any]] = {
    "ours": {"policy": "cache_aware"},
    "serve": {"policy": "serve_default"},
    "ray": {"policy": "ray_prefix_affinity"},
    "ray-t8": {"policy": "ray_prefix_affinity", "imbalanced_threshold": 8},
}
REPLICAS = 3
VLLM_BLOCK = 128  # vLLM's KV block on CPU (tokens)


def model_name(policy: str) -> str:
    return f"route-{policy}:135m"


def stack_config(work: Path, kv_tokens: int, max_model_len: int, policies: list[str]) -> Path:
    """config.yaml's chat model, once per policy, three replicas each, small KV caches."""

    def mutate(cfg: dict[str, Any]) -> None:
        args = cfg["applications"][0]["args"]
        chat = next(m for m in args["models"] if m.get("kind", "generate") == "generate")
        models = []
        for policy in policies:
            routing = POLICIES[policy]
            model = json.loads(json.dumps(chat))
            model["name"] = model_name(policy)
            model["aliases"] = []
            model["engine_args"]["max_model_len"] = max_model_len
            model["engine_args"]["engine_kwargs"] = {
                **model["engine_args"].get("engine_kwargs", {}),
                "num_gpu_blocks_override": kv_tokens // VLLM_BLOCK,
            }
            model["deployment"] = {
                "num_replicas": REPLICAS,
                "max_ongoing_requests": 32,
                "max_queued_requests": 512,
                "health_check_timeout_s": 120,
                "ray_actor_options": {"num_cpus": 0.1},
            }
            model["routing"] = routing
            models.append(model)
        args["models"] = models

    return servers.write_config(servers.REPO / "config.yaml", mutate, work / "routing.yaml")


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


class Prompts:
    """Seeded prompts of one cell (the same for every policy)."""

    def __init__(self, kind: str, seed: int, groups: int, prefix_words: int, requests: int) -> None:
        rng = random.Random(seed)
        prefixes = [f"Group {seed}-{g}. Read this manual. " + words(rng, prefix_words) for g in range(groups)]
        self.messages = []
        for i in range(requests):
            question = f"Question {seed}-{i}: " + words(rng, rng.randint(48, 96))
            if kind == "grouped":
                system = rng.choice(prefixes)
            elif kind == "one":
                system = prefixes[0]
            else:  # nothing shared: a prompt of the same length, unique from its first word
                system = f"Unique {seed}-{i}. " + words(rng, prefix_words)
            self.messages.append([{"role": "system", "content": system}, {"role": "user", "content": question}])
        self.gaps = [rng.expovariate(1.0) for _ in range(requests)]  # scaled by the cell's rate


def body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": messages, "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "temperature": 0.0, "stream_options": {"include_usage": True}}


async def run_cell(url: str, model: str, prompts: Prompts, rate: float, max_tokens: int) -> tuple[list[RequestRecord], float]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for messages, gap in zip(prompts.messages, prompts.gaps, strict=True):
            tasks.append(asyncio.create_task(_one_chat(client, "openai", body(model, messages, max_tokens))))
            await asyncio.sleep(gap / rate)
        records = list(await asyncio.gather(*tasks))
        return records, time.perf_counter() - started


def scrape(url: str, deployment: str) -> dict[str, dict[str, float]]:
    """``{family: {replica: value}}`` of the routing families of one deployment."""
    out: dict[str, dict[str, float]] = {}
    pattern = re.compile(r'^(llm_(?:router|engine)_[a-z_]+)\{deployment="' + re.escape(deployment) + r'",replica="([^"]+)"\} (\S+)$')
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        match = pattern.match(line)
        if match:
            out.setdefault(match.group(1), {})[match.group(2)] = float(match.group(3))
    return out


def delta(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]], family: str) -> dict[str, float]:
    now, then = after.get(family, {}), before.get(family, {})
    return {replica: value - then.get(replica, 0.0) for replica, value in now.items()}


def deployment_of(policy: str) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model_name(policy))


def engine_speed(url: str, prefix_words: int) -> dict[str, float]:
    """At idle, on ``ours``: TTFT of an uncached ~1,000-token prompt, of the same prompt cached,
    and decode tokens/s of one stream."""
    rng = random.Random(12345)
    messages = [{"role": "system", "content": "Calibration. " + words(rng, prefix_words)},
                {"role": "user", "content": "Question: " + words(rng, 64)}]

    def one(max_tokens: int) -> RequestRecord:
        async def go() -> RequestRecord:
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                return await _one_chat(client, "openai", body(model_name("ours"), messages, max_tokens))
        return asyncio.run(go())

    cold = one(1)
    warm = one(1)
    decode = one(64)
    prompt_tokens = prompt_length(url, messages)
    assert cold.ttft and warm.ttft and decode.tpot, (cold.error, warm.error, decode.error)
    return {"prompt_tokens": prompt_tokens, "uncached_ttft_s": cold.ttft, "cached_ttft_s": warm.ttft,
            "prefill_tokens_per_s": prompt_tokens / cold.ttft, "decode_tokens_per_s_1_stream": 1 / decode.tpot}


def prompt_length(url: str, messages: list[dict[str, str]]) -> int:
    response = httpx.post(f"{url}/v1/chat/completions", timeout=600,
                          json={"model": model_name("ours"), "messages": messages, "max_tokens": 1})
    return int(response.json()["usage"]["prompt_tokens"])


def calibrate_words(url: str, target_tokens: int) -> int:
    """Prefix words that make ~``target_tokens`` tokens under the model's tokenizer."""
    rng = random.Random(7)
    sample = 400
    tokens = prompt_length(url, [{"role": "system", "content": words(rng, sample)}, {"role": "user", "content": "hi"}])
    return max(50, round(sample * target_tokens / max(tokens, 1)))


def cell_row(policy: str, kind: str, rate: float, records: list[RequestRecord], wall: float,
             before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], cpu: dict[str, float]) -> dict[str, Any]:
    summary = summarise(records, wall)
    queries = sum(delta(after, before, "llm_engine_prefix_cache_queries_tokens_total").values())
    hits = sum(delta(after, before, "llm_engine_prefix_cache_hits_tokens_total").values())
    predicted = sum(delta(after, before, "llm_router_predicted_prefix_hit_tokens_total").values())
    estimated = sum(delta(after, before, "llm_router_prompt_tokens_total").values())
    routed = [v for v in delta(after, before, "llm_router_requests_total").values() if v >= 0]
    busiest = max(routed) / (sum(routed) / REPLICAS) if routed and sum(routed) else None
    cpu_total = totals(cpu)
    tokens = summary["output_tokens"]
    return {
        "policy": policy, "workload": kind, "rate": rate, **summary,
        "engine_prefix_hit_rate": hits / queries if queries else None,
        "router_predicted_hit_rate": predicted / estimated if estimated else None,
        "routed_per_replica": sorted(routed, reverse=True),
        "busiest_over_average": busiest,
        "cpu_s": cpu,
        "stack_cpu_s_per_1000_tokens": {k: v * 1000 / tokens for k, v in cpu_total.items()} if tokens else None,
    }


def run(options: argparse.Namespace) -> dict[str, Any]:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = options.out / f"{stamp}-routing"
    policies = options.policies.split(",")
    config = stack_config(work, options.kv_tokens, options.max_model_len, policies)
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        server = stack.enter_context(servers.serve_stack(config, 18300, work / "stack.log", timeout_s=1800))
        url = server.url
        prefix_words = calibrate_words(url, options.prefix_tokens)
        speed = engine_speed(url, prefix_words)
        print("engine speed:", speed, flush=True)
        total_kv = REPLICAS * options.kv_tokens
        groups = max(2, round(0.7 * total_kv / options.prefix_tokens))
        # The engine's uncached throughput in requests/s bounds the rates: a fraction to a multiple.
        base_rate = options.base_rate or (1 / speed["uncached_ttft_s"])
        cells = [("grouped", base_rate * f) for f in options.rate_factors]
        cells += [("none", base_rate * options.control_factor), ("one", base_rate * options.control_factor)]
        meter = CpuMeter(server.pid)
        for index, (kind, rate) in enumerate(cells):
            prompts = Prompts(kind, seed=1000 + index, groups=groups, prefix_words=prefix_words, requests=options.requests)
            order = policies if index % 2 == 0 else list(reversed(policies))
            for policy in order:
                deployment = deployment_of(policy)
                time.sleep(options.settle_s)  # the replicas' last counters reach the router
                before = scrape(url, deployment)
                cpu_before = meter.snapshot()
                records, wall = asyncio.run(run_cell(url, model_name(policy), prompts, rate, options.max_tokens))
                cpu = cpu_between(cpu_before, meter.snapshot())
                time.sleep(options.settle_s)
                row = cell_row(policy, kind, rate, records, wall, before, scrape(url, deployment), cpu)
                rows.append(row)
                print(json.dumps({k: row[k] for k in ("policy", "workload", "rate", "ok", "output_tokens_per_s",
                                                       "engine_prefix_hit_rate", "busiest_over_average")}
                                 | {"ttft_p50": row["ttft_s"]["p50"], "ttft_p90": row["ttft_s"]["p90"],
                                    "errors": row["errors"]}), flush=True)
    result = {"date": stamp, "engine_speed": speed, "groups": groups, "prefix_tokens": options.prefix_tokens,
              "prefix_words": prefix_words, "kv_tokens_per_replica": options.kv_tokens, "rows": rows,
              "ratios": ratios(rows)}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nresults in {work}")
    return result


def _get(rows: list[dict[str, Any]], policy: str, kind: str, rate: float | None = None) -> dict[str, Any] | None:
    for row in rows:
        if row["policy"] == policy and row["workload"] == kind and (rate is None or row["rate"] == rate):
            return row
    return None


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, per grouped rate and for the two controls."""
    out = []
    for rate in sorted({r["rate"] for r in rows if r["workload"] == "grouped"}):
        ours = _get(rows, "ours", "grouped", rate)
        for ray_name in ("ray", "ray-t8"):
            ray = _get(rows, ray_name, "grouped", rate)
            if ours and ray:
                out.append({"figure": f"grouped @ {rate:.2f} req/s: tokens/s ours/{ray_name}", "target": ">= 1.25",
                            "value": _div(ours["output_tokens_per_s"], ray["output_tokens_per_s"])})
                out.append({"figure": f"grouped @ {rate:.2f} req/s: TTFT p90 ours/{ray_name}", "target": "<= 0.5",
                            "value": _div(ours["ttft_s"]["p90"], ray["ttft_s"]["p90"])})
        serve = _get(rows, "serve", "grouped", rate)
        if ours and serve:
            out.append({"figure": f"grouped @ {rate:.2f} req/s: tokens/s ours/serve", "target": ">= 2",
                        "value": _div(ours["output_tokens_per_s"], serve["output_tokens_per_s"])})
    ours, serve = _get(rows, "ours", "none"), _get(rows, "serve", "none")
    if ours and serve:
        out.append({"figure": "nothing shared: tokens/s ours/serve", "target": ">= 0.95",
                    "value": _div(ours["output_tokens_per_s"], serve["output_tokens_per_s"])})
    one = _get(rows, "ours", "one")
    if one:
        out.append({"figure": "one prefix for all: errors (ours)", "target": "0", "value": one["requests"] - one["ok"]})
        out.append({"figure": "one prefix for all: busiest/average routed (ours)", "target": "<= 1.5",
                    "value": one["busiest_over_average"]})
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def report(result: dict[str, Any]) -> str:
    lines = [f"engine: {json.dumps({k: round(v, 3) for k, v in result['engine_speed'].items()})}",
             f"groups: {result['groups']} x ~{result['prefix_tokens']} tokens; KV per replica {result['kv_tokens_per_replica']} tokens",
             "", "| workload | rate | policy | ok | out tok/s | TTFT p50 | TTFT p90 | engine hit rate | busiest/avg | CPU-s/1k tok outside engines |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        cpu = (row["stack_cpu_s_per_1000_tokens"] or {}).get("all outside the engine")
        lines.append(f"| {row['workload']} | {row['rate']:.2f} | {row['policy']} | {row['ok']}/{row['requests']} | "
                     f"{_fmt(row['output_tokens_per_s'])} | {_fmt(row['ttft_s']['p50'])} | {_fmt(row['ttft_s']['p90'])} | "
                     f"{_fmt(row['engine_prefix_hit_rate'])} | {_fmt(row['busiest_over_average'])} | {_fmt(cpu)} |")
    lines += ["", "| figure | value | target |", "|---|---|---|"]
    lines += [f"| {r['figure']} | {_fmt(r['value'])} | {r['target']} |" for r in result["ratios"]]
    return "\n".join(lines)


def micro(samples: int = 5000) -> dict[str, Any]:
    """The cost of one routing decision in-process: key, hashes, ranking and index update."""
    from deployments.prefix_index import (
        ReplicaIndex,
        ReplicaLoad,
        Weights,
        block_hashes,
        prompt_key_text,
        rank_replicas,
    )
    from serve_app.core.internal_types import ChatMessage, GenerationRequest

    rng = random.Random(3)
    weights = Weights()
    out: dict[str, Any] = {}
    for replicas in (3, 8):
        loads = [ReplicaLoad(f"r{i}", ReplicaIndex(6144 * 4 // 64)) for i in range(replicas)]
        prefixes = [words(rng, 700) for _ in range(13)]
        timings = []
        for _i in range(samples):
            request = GenerationRequest(model="m", messages=[
                ChatMessage(role="system", content=rng.choice(prefixes)),
                ChatMessage(role="user", content=words(rng, 70))])
            started = time.perf_counter()
            hashes = block_hashes(prompt_key_text(request), weights.block_chars)
            best = rank_replicas(loads, hashes, weights).ranked[0]
            best.index.insert(hashes)
            timings.append(time.perf_counter() - started)
            best.in_flight = (best.in_flight + 1) % 4
        timings.sort()
        out[f"{replicas} replicas"] = {"p50_ms": timings[len(timings) // 2] * 1000,
                                       "p99_ms": timings[int(len(timings) * 0.99)] * 1000,
                                       "prompt_chars": len(prompt_key_text(request))}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro", action="store_true", help="only the in-process cost of a routing decision")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--kv-tokens", type=int, default=6144, help="KV cache per replica (tokens)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=36, help="requests per cell")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--base-rate", type=float, default=0.0, help="req/s; default: 1 / uncached TTFT at idle")
    parser.add_argument("--rate-factors", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--control-factor", type=float, default=1.0)
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--policies", default="ours,serve",
                        help=f"comma-separated, of {', '.join(POLICIES)}; each is 3 vLLM replicas (~1.3 GB each): "
                             "on a 24 GiB machine two fit; three or four were killed by Ray's memory monitor while starting")
    options = parser.parse_args(argv)
    if options.micro:
        print(json.dumps(micro(), indent=2))
        return
    run(options)


if __name__ == "__main__":
    main()
