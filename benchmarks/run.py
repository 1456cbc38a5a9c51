"""Run a benchmark suite side by side, interleaved, and write JSON, a Markdown table and plots.

    python -m benchmarks.run fake   # serving layer alone: ingress in-process (C) vs through Ray Serve (B)
    python -m benchmarks.run cpu    # real SmolLM2 on CPU: raw vLLM server (A) vs our stack (B)
    python -m benchmarks.run gpu    # the same on a GPU machine, bigger model, higher concurrency

A = raw vLLM OpenAI server, B = our stack through Ray Serve, C = our ingress in-process (no Ray).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks import servers
from benchmarks.loadgen import Workload, run_load
from benchmarks.report import write_report
from benchmarks.stats import summarise

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Scenario:
    """One measured point: a workload at a concurrency, on every target."""

    name: str
    workload: Workload
    concurrency: int
    num_requests: int
    targets: list[str]


def fake_suite(work: Path, stack: ExitStack) -> tuple[dict[str, str], list[Scenario]]:
    def two_models(cfg: dict[str, Any]) -> None:
        args = cfg["applications"][0]["args"]
        paced, fast = args["models"][0], args["models"][1]
        paced["engine_args"] = {"token_interval_s": 0.02, "output_tokens": 64}
        fast["engine_args"] = {"token_interval_s": 0.0, "output_tokens": 512}
        for model in (paced, fast):
            model["deployment"] = {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}}

    config = servers.write_config(servers.REPO / "config.fake.yaml", two_models, work / "fake.yaml")
    urls = {
        "B": stack.enter_context(servers.serve_stack(config, 18000, work / "B.log")),
        "C": stack.enter_context(servers.local_ingress(config, 18001, work / "C.log")),
    }
    paced = Workload("chat 20ms/token", "openai", "smollm2:135m", max_tokens=64)
    fast = Workload("chat 0ms/token (chunk ceiling)", "openai", "qwen2.5:0.5b", max_tokens=512)
    scenarios = [
        Scenario("ttft-1", paced, 1, 30, ["B", "C"]),
        Scenario("tpot-32", paced, 32, 96, ["B", "C"]),
        Scenario("ceiling-32", fast, 32, 64, ["B", "C"]),
        Scenario("ollama-32", Workload("ollama chat 20ms/token", "ollama", "smollm2:135m", max_tokens=64), 32, 96, ["B", "C"]),
    ]
    return urls, scenarios


def cpu_suite(work: Path, stack: ExitStack, gpu: bool = False) -> tuple[dict[str, str], list[Scenario]]:
    from deployments.model_sources import prepare_default_models

    paths = prepare_default_models(progress=False)
    chat_dir = next(p for s, p in paths.items() if "smollm2" in s)
    config_file = servers.REPO / ("config.gpu.yaml" if gpu else "config.yaml")

    def no_prefix_cache(cfg: dict[str, Any]) -> None:
        for model in cfg["applications"][0]["args"]["models"]:
            if model.get("kind", "generate") == "generate":
                model["engine_args"]["enable_prefix_caching"] = False

    config = servers.write_config(config_file, no_prefix_cache, work / "stack.yaml")
    flags = ["--max-model-len", "2048", "--no-enable-prefix-caching"]
    flags += ["--dtype", "bfloat16"] if gpu else ["--dtype", "float32", "--enforce-eager"]
    env = {} if gpu else {"VLLM_CPU_KVCACHE_SPACE": "1"}
    urls = {
        "A": stack.enter_context(servers.raw_vllm(chat_dir, "smollm2:135m", 18100, work / "A.log", flags, env)),
        "B": stack.enter_context(servers.serve_stack(config, 18101, work / "B.log")),
    }
    urls["B-ollama"] = urls["B"]
    levels = [1, 16, 64, 256] if gpu else [1, 4, 16]
    scenarios = []
    for level in levels:
        requests = max(2 * level, 8)
        scenarios.append(Scenario(f"chat-{level}", Workload("short chat", "openai", "smollm2:135m"), level, requests, ["A", "B"]))
        scenarios.append(Scenario(f"ollama-{level}", Workload("short chat", "ollama", "smollm2:135m"), level, requests, ["B-ollama"]))
    scenarios.append(Scenario("long-prompt-4", Workload("long prompt", "openai", "smollm2:135m", prompt_words=600, max_tokens=32), 4, 8, ["A", "B"]))
    scenarios.append(Scenario("embeddings-4", Workload("embeddings batch", "openai-embeddings", "all-minilm:l6-v2"), 4, 16, ["B"]))
    return urls, scenarios


def run_scenarios(urls: dict[str, str], scenarios: list[Scenario], repeats: int) -> list[dict[str, Any]]:
    total = sum(s.num_requests * len(s.targets) for s in scenarios) * repeats
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, unit="req", desc="benchmark") as bar:
        for scenario in scenarios:
            for repeat in range(repeats):
                # Alternate the order so drift on a noisy machine hits every target alike.
                order = scenario.targets if repeat % 2 == 0 else list(reversed(scenario.targets))
                for target in order:
                    api = scenario.workload.api
                    workload = scenario.workload
                    if target.endswith("-ollama"):
                        workload = Workload(**{**workload.__dict__, "api": "ollama"})
                    records, wall = asyncio.run(
                        run_load(urls[target], workload, concurrency=scenario.concurrency,
                                 num_requests=scenario.num_requests, seed=repeat, on_done=bar.update)
                    )
                    rows.append({"scenario": scenario.name, "workload": workload.name, "api": api,
                                 "concurrency": scenario.concurrency, "target": target, "repeat": repeat,
                                 **summarise(records, wall)})
    return rows


def median_of(rows: list[dict[str, Any]], scenario: str, target: str, path: tuple[str, ...]) -> float | None:
    values = []
    for row in rows:
        if row["scenario"] == scenario and row["target"] == target:
            value: Any = row
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                values.append(value)
    return statistics.median(values) if values else None


def ratios(suite: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The target ratios of the benchmarks issue, with where we stand."""
    def ratio(s: str, num: str, den: str, path: tuple[str, ...]) -> float | None:
        a, b = median_of(rows, s, num, path), median_of(rows, s, den, path)
        return a / b if a is not None and b else None

    def diff_ms(s: str, num: str, den: str, path: tuple[str, ...]) -> float | None:
        a, b = median_of(rows, s, num, path), median_of(rows, s, den, path)
        return (a - b) * 1000 if a is not None and b is not None else None

    if suite == "fake":
        return [
            {"figure": "time per output token B/C, 32 streams, 20 ms/token", "value": ratio("tpot-32", "B", "C", ("tpot_s", "p50")), "target": "<= 1.03"},
            {"figure": "streamed-chunk ceiling B/C (tokens/s, 32 streams, 0 ms/token)", "value": ratio("ceiling-32", "B", "C", ("output_tokens_per_s",)), "target": ">= 0.6"},
            {"figure": "time to first token B-C at 1 stream (ms, p50)", "value": diff_ms("ttft-1", "B", "C", ("ttft_s", "p50")), "target": "<= 10"},
            {"figure": "inter-token latency p99 B/C, 32 streams (reported, not gated)", "value": ratio("tpot-32", "B", "C", ("itl_s", "p99")), "target": "-"},
        ]
    top = 256 if suite == "gpu" else 16
    out = [
        {"figure": f"output tokens/s B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("output_tokens_per_s",)), "target": ">= 0.95"},
        {"figure": f"median time to first token B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("ttft_s", "p50")), "target": "<= 1.2"},
        {"figure": "time to first token B-A at 1 stream (ms, p50)", "value": diff_ms("chat-1", "B", "A", ("ttft_s", "p50")), "target": "<= 5 (GPU)"},
        {"figure": f"time per output token B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("tpot_s", "p50")), "target": "-"},
    ]
    if suite == "gpu":
        out.append({"figure": "requests/s B/A at 256 streams", "value": ratio("chat-256", "B", "A", ("requests_per_s",)), "target": ">= 0.97"})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["fake", "cpu", "gpu"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="comma-separated scenario names to run (default: all)")
    options = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = options.out / f"{stamp}-{options.suite}"
    with ExitStack() as stack:
        if options.suite == "fake":
            urls, scenarios = fake_suite(work, stack)
        else:
            urls, scenarios = cpu_suite(work, stack, gpu=options.suite == "gpu")
        if options.only:
            scenarios = [s for s in scenarios if s.name in options.only.split(",")]
        rows = run_scenarios(urls, scenarios, options.repeats)
    result = {"suite": options.suite, "date": stamp, "rows": rows, "ratios": ratios(options.suite, rows)}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    report = write_report(result, work)
    print(report)
    print(f"\nresults in {work}")


if __name__ == "__main__":
    main()
