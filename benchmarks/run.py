"""Run a benchmark suite side by side, interleaved, and write JSON, a Markdown table and plots.

    python -m benchmarks.run fake   # serving layer alone: ingress in-process (C) vs through Ray Serve (B)
    python -m benchmarks.run cpu    # real SmolLM2 on CPU: raw vLLM server (A) vs our stack (B)
    python -m benchmarks.run gpu    # the same on a GPU machine, bigger model, higher concurrency

A = raw vLLM OpenAI server, B = our stack through Ray Serve, C = our ingress in-process (no Ray),
R = Ray Serve LLM (``ray.serve.llm``) on the same engine and model.

Beside tokens/s and latencies, every run records the CPU-seconds each process of each target
spent (``benchmarks.cpu_accounting``), per 1,000 output tokens, with the stack's idle rate
measured first so fixed and per-token costs are reported apart.
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
from benchmarks.cpu_accounting import CpuMeter, cpu_between
from benchmarks.loadgen import Workload, run_load
from benchmarks.report import cpu_per_thousand, write_report
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


Targets = dict[str, servers.Server]


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """``NAME:VAR=VALUE,VAR=VALUE`` -> ``{"B-NAME": {VAR: VALUE}}``: our stack again, with this env.

    The env reaches every process ``serve run`` starts (its local Ray cluster inherits it, and it
    overrides the config's controller_options), so a variant can change Serve's transport, proxy
    or control loop as well as our settings; ``before:RAY_SERVE_ENABLE_HA_PROXY=0,...`` measures
    the shipped settings against Serve's defaults in the same run.
    """
    variants = {}
    for spec in specs:
        name, _, assignments = spec.partition(":")
        env = dict(item.split("=", 1) for item in assignments.split(",") if item)
        variants[f"B-{name}"] = env
    return variants


def add_variants(targets: Targets, variants: dict[str, dict[str, str]], config: Path, work: Path, stack: ExitStack,
                 first_port: int) -> list[str]:
    """Start one more of our stacks per variant; returns their target names."""
    for offset, (name, env) in enumerate(variants.items(), start=1):
        targets[name] = stack.enter_context(
            servers.serve_stack(config, first_port + offset, work / f"{name}.log", env={**HAPROXY_PORTS(offset), **env})
        )
    return list(variants)


def HAPROXY_PORTS(offset: int) -> dict[str, str]:  # noqa: N802 - a table of env vars
    """Ports of Serve's HAProxy mode, distinct per stack so variants can run side by side."""
    base = 23000 + 100 * offset
    return {
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(base), "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(base + 1),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(base + 2), "RAY_SERVE_HAPROXY_STATS_PORT": str(base + 3),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(base + 10), "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(base + 50),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(base + 51), "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(base + 90),
    }


def fake_suite(work: Path, stack: ExitStack, variants: dict[str, dict[str, str]]) -> tuple[Targets, list[Scenario]]:
    def two_models(cfg: dict[str, Any]) -> None:
        args = cfg["applications"][0]["args"]
        paced, fast = args["models"][0], args["models"][1]
        paced["engine_args"] = {"token_interval_s": 0.02, "output_tokens": 64}
        fast["engine_args"] = {"token_interval_s": 0.0, "output_tokens": 512}
        for model in (paced, fast):
            model["deployment"] = {"num_replicas": 1, "max_ongoing_requests": 256, "ray_actor_options": {"num_cpus": 0.25}}

    config = servers.write_config(servers.REPO / "config.fake.yaml", two_models, work / "fake.yaml")
    targets = {
        "B": stack.enter_context(servers.serve_stack(config, 18000, work / "B.log", env=HAPROXY_PORTS(0))),
        "C": stack.enter_context(servers.local_ingress(config, 18001, work / "C.log")),
    }
    ours = ["B", *add_variants(targets, variants, config, work, stack, 18010), "C"]
    paced = Workload("chat 20ms/token", "openai", "smollm2:135m", max_tokens=64)
    fast = Workload("chat 0ms/token (chunk ceiling)", "openai", "qwen2.5:0.5b", max_tokens=512)
    scenarios = [
        Scenario("ttft-1", paced, 1, 30, ours),
        Scenario("tpot-32", paced, 32, 96, ours),
        Scenario("ceiling-32", fast, 32, 64, ours),
        Scenario("ollama-32", Workload("ollama chat 20ms/token", "ollama", "smollm2:135m", max_tokens=64), 32, 96, ours),
        Scenario("anthropic-32", Workload("anthropic messages 20ms/token", "anthropic", "smollm2:135m", max_tokens=64),
                 32, 96, ours),
    ]
    return targets, scenarios


def cpu_suite(work: Path, stack: ExitStack, variants: dict[str, dict[str, str]],
              gpu: bool = False, ray_llm: bool = True) -> tuple[Targets, list[Scenario]]:
    from deployments.model_sources import prepare_default_models

    paths = prepare_default_models(progress=False)
    chat_dir = next(p for s, p in paths.items() if "smollm2" in s)
    config_file = servers.REPO / ("config.gpu.yaml" if gpu else "config.yaml")

    def no_prefix_cache(cfg: dict[str, Any]) -> None:
        for model in cfg["applications"][0]["args"]["models"]:
            if model.get("kind", "generate") == "generate":
                model["engine_args"]["enable_prefix_caching"] = False

    config = servers.write_config(config_file, no_prefix_cache, work / "stack.yaml")
    context = served_context_length(config)
    flags = ["--max-model-len", str(context), "--no-enable-prefix-caching"]
    flags += ["--dtype", "bfloat16"] if gpu else ["--dtype", "float32", "--enforce-eager"]
    env = {} if gpu else {"VLLM_CPU_KVCACHE_SPACE": "1"}
    engine_kwargs: dict[str, Any] = {"max_model_len": context, "enable_prefix_caching": False}
    engine_kwargs.update({"dtype": "bfloat16"} if gpu else {"dtype": "float32", "enforce_eager": True})
    targets = {
        "A": stack.enter_context(servers.raw_vllm(chat_dir, "smollm2:135m", 18100, work / "A.log", flags, env)),
        "B": stack.enter_context(servers.serve_stack(config, 18101, work / "B.log", env=HAPROXY_PORTS(0))),
    }
    if ray_llm:
        targets["R"] = stack.enter_context(
            servers.ray_serve_llm(chat_dir, RAY_LLM_MODEL, 18102, work / "R.log", engine_kwargs, env, gpu)
        )
    targets["B-ollama"] = targets["B"]
    extra = add_variants(targets, variants, config, work, stack, 18110)
    levels = [1, 16, 64, 256] if gpu else [1, 4, 16]
    scenarios = []
    for level in levels:
        requests = max(2 * level, 8)
        scenarios.append(Scenario(f"chat-{level}", Workload("short chat", "openai", "smollm2:135m"), level, requests,
                                  ["A", "B", *extra, *(["R"] if ray_llm else [])]))
        scenarios.append(Scenario(f"ollama-{level}", Workload("short chat", "ollama", "smollm2:135m"), level, requests, ["B-ollama"]))
    scenarios.append(Scenario("anthropic-16", Workload("short chat", "anthropic", "smollm2:135m"), 16, 32, ["B"]))
    scenarios.append(Scenario("long-prompt-4", Workload("long prompt", "openai", "smollm2:135m", prompt_words=600, max_tokens=32), 4, 8, ["A", "B"]))
    scenarios.append(Scenario("embeddings-4", Workload("embeddings batch", "openai-embeddings", "all-minilm:l6-v2"), 4, 16, ["B"]))
    return targets, scenarios


def lora_suite(work: Path, stack: ExitStack, gpu: bool = False) -> tuple[Targets, list[Scenario]]:
    """One engine serving LoRA adapters: base-only load against 4 test-made adapters mixed in
    one load (every request's adapter differs from its neighbours'), 16 streams each."""
    from deployments.model_sources import prepare_default_models
    from tests.e2e.lora_support import RANK, make_adapter

    paths = prepare_default_models(progress=False)
    chat_dir = Path(next(p for s, p in paths.items() if "smollm2" in s))
    folder = work / "adapters"
    names = [f"a{i}" for i in range(4)]
    for seed, name in enumerate(names, start=1):
        make_adapter(chat_dir, folder / name, seed=seed)

    def with_adapters(cfg: dict[str, Any]) -> None:
        chat = next(m for m in cfg["applications"][0]["args"]["models"] if m["name"] == LORA_BASE)
        chat["adapter_folder"] = str(folder)
        chat["lora"] = {"max_loras": len(names), "max_lora_rank": RANK}
        chat["engine_args"]["enable_prefix_caching"] = False

    config = servers.write_config(servers.REPO / ("config.gpu.yaml" if gpu else "config.yaml"), with_adapters,
                                  work / "stack.yaml")
    targets = {"B": stack.enter_context(servers.serve_stack(config, 18201, work / "B.log", env=HAPROXY_PORTS(0)))}
    base = Workload("short chat, base model", "openai", LORA_BASE)
    mixed = Workload("short chat, 4 adapters mixed", "openai", LORA_BASE, models=tuple(f"{LORA_BASE}:{n}" for n in names))
    level = 64 if gpu else 16
    return targets, [Scenario(f"base-{level}", base, level, 2 * level, ["B"]),
                     Scenario(f"lora-{level}", mixed, level, 2 * level, ["B"])]


LORA_BASE = "smollm2:135m"


def lora_ratios(rows: list[dict[str, Any]], level: int, idle: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Adapters mixed against the base alone, on the same engine in the same run, and what each
    costs in CPU per 1,000 tokens per process."""
    result = {"rows": rows, "idle_cpu_per_s": idle}
    def across(path: tuple[str, ...]) -> float | None:
        lora, base = median_of(rows, f"lora-{level}", "B", path), median_of(rows, f"base-{level}", "B", path)
        return lora / base if lora is not None and base else None

    return [
        {"figure": f"base model alone: output tokens/s at {level} streams (the engine's speed)",
         "value": median_of(rows, f"base-{level}", "B", ("output_tokens_per_s",)), "target": "-"},
        {"figure": f"output tokens/s, 4 adapters mixed / base alone, {level} streams",
         "value": across(("output_tokens_per_s",)), "target": "-"},
        {"figure": f"median time to first token, 4 adapters mixed / base alone, {level} streams",
         "value": across(("ttft_s", "p50")), "target": "-"},
        *cpu_figures(result, f"base-{level}", ["B"]),
        *cpu_figures(result, f"lora-{level}", ["B"]),
    ]


# Ray Serve LLM reads a colon in a model id as base:adapter (FACTS.md).
RAY_LLM_MODEL = "smollm2-135m"


def served_context_length(config: Path) -> int:
    """The chat model's context in our stack's config (A and R are started with the same)."""
    import yaml

    from deployments.config import parse_app_config

    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    cards = parse_app_config(args).cards()
    return next(c.context_length for c in cards.values() if c.kind == "generate")


def measure_idle(targets: Targets, seconds: float) -> dict[str, dict[str, float]]:
    """CPU-seconds per second each role of each target spends with nothing to do (its fixed cost)."""
    meters = {name: CpuMeter(server.pid) for name, server in _distinct(targets).items()}
    before = {name: meter.snapshot() for name, meter in meters.items()}
    time.sleep(seconds)
    after = {name: meter.snapshot() for name, meter in meters.items()}
    return {name: {role: s / seconds for role, s in cpu_between(before[name], after[name]).items()} for name in meters}


def _distinct(targets: Targets) -> Targets:
    """One entry per process tree (B-ollama is B's tree under another route)."""
    seen: dict[int, str] = {}
    return {name: server for name, server in targets.items() if seen.setdefault(server.pid, name) == name}


def run_scenarios(targets: Targets, scenarios: list[Scenario], repeats: int) -> list[dict[str, Any]]:
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
                    if targets[target].chat_model and workload.api != "openai-embeddings":
                        workload = Workload(**{**workload.__dict__, "model": targets[target].chat_model})
                    meter = CpuMeter(targets[target].pid)
                    before = meter.snapshot()
                    records, wall = asyncio.run(
                        run_load(targets[target].url, workload, concurrency=scenario.concurrency,
                                 num_requests=scenario.num_requests, seed=repeat, on_done=bar.update)
                    )
                    cpu = cpu_between(before, meter.snapshot())
                    rows.append({"scenario": scenario.name, "workload": workload.name, "api": api,
                                 "concurrency": scenario.concurrency, "target": target, "repeat": repeat,
                                 **summarise(records, wall), "cpu_s": cpu})
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


def cpu_figures(result: dict[str, Any], scenario: str, targets: list[str]) -> list[dict[str, Any]]:
    """The CPU targets: CPU-s per 1,000 output tokens outside the engine, serving processes vs raw."""
    per = {t: cpu_per_thousand(result, scenario, t, minus_idle=False) for t in targets}
    out = []
    for t in targets:
        if per[t] is not None:
            target = "<= 1.0" if t in ("B", "C") else "-"
            out.append({"figure": f"{t}: CPU-s per 1,000 tokens outside the engine, {scenario}",
                        "value": per[t]["all outside the engine"], "target": target})
    a, b, r = per.get("A"), per.get("B"), per.get("R")
    if a and b and a["http front"]:
        out.append({"figure": f"B serving processes / A's whole API server (CPU per token), {scenario}",
                    "value": b["serving processes"] / a["http front"], "target": "<= 2"})
    if b and r and r["all outside the engine"]:
        out.append({"figure": f"B / R outside the engine (CPU per token), {scenario}",
                    "value": b["all outside the engine"] / r["all outside the engine"], "target": "< 1"})
    return out


def ratios(suite: str, rows: list[dict[str, Any]], idle: dict[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """The target ratios of the benchmarks issues, with where we stand."""
    result = {"rows": rows, "idle_cpu_per_s": idle or {}}
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
            # At 20 ms/token every chunk carries one token, as on a CPU engine: the path's cost per
            # token. (The 0 ms ceiling groups hundreds of tokens a chunk and hides it.)
            *cpu_figures(result, "tpot-32", ["B", "C"]),
        ]
    top = 256 if suite == "gpu" else 16
    out = [
        {"figure": f"output tokens/s B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("output_tokens_per_s",)), "target": ">= 0.95"},
        {"figure": f"median time to first token B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("ttft_s", "p50")), "target": "<= 1.2"},
        {"figure": "time to first token B-A at 1 stream (ms, p50)", "value": diff_ms("chat-1", "B", "A", ("ttft_s", "p50")), "target": "<= 5 (GPU)"},
        {"figure": f"time per output token B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("tpot_s", "p50")), "target": "-"},
        {"figure": f"inter-token latency p99 B/A at {top} streams", "value": ratio(f"chat-{top}", "B", "A", ("itl_s", "p99")), "target": "<= 1.5"},
        {"figure": f"output tokens/s R/A at {top} streams", "value": ratio(f"chat-{top}", "R", "A", ("output_tokens_per_s",)), "target": "-"},
        *cpu_figures(result, f"chat-{top}", ["A", "B", "R"]),
    ]
    if suite == "gpu":
        out.append({"figure": "requests/s B/A at 256 streams", "value": ratio("chat-256", "B", "A", ("requests_per_s",)), "target": ">= 0.97"})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["fake", "cpu", "gpu", "lora", "lora-gpu"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default="", help="comma-separated scenario names to run (default: all)")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of idle stack measured for fixed costs")
    parser.add_argument("--no-ray-llm", action="store_true", help="leave out R (Ray Serve LLM)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:VAR=VALUE,...: our stack again with this env (repeatable), e.g. "
                             "direct:RAY_SERVE_ENABLE_HA_PROXY=0")
    options = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = options.out / f"{stamp}-{options.suite}"
    with ExitStack() as stack:
        variants = parse_variants(options.variant)
        if options.suite == "fake":
            targets, scenarios = fake_suite(work, stack, variants)
        elif options.suite.startswith("lora"):
            targets, scenarios = lora_suite(work, stack, gpu=options.suite == "lora-gpu")
        else:
            targets, scenarios = cpu_suite(work, stack, variants, gpu=options.suite == "gpu", ray_llm=not options.no_ray_llm)
        if options.only:
            scenarios = [s for s in scenarios if s.name in options.only.split(",")]
        idle = measure_idle(targets, options.idle_s)
        rows = run_scenarios(targets, scenarios, options.repeats)
    figures = (lora_ratios(rows, 64 if options.suite == "lora-gpu" else 16, idle) if options.suite.startswith("lora")
               else ratios(options.suite, rows, idle))
    result = {"suite": options.suite, "date": stamp, "idle_cpu_per_s": idle, "rows": rows, "ratios": figures}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    report = write_report(result, work)
    print(report)
    print(f"\nresults in {work}")


if __name__ == "__main__":
    main()
