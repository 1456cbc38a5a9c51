"""CPU-seconds per process, read from the processes' own counters (``/proc/<pid>/stat``).

Each benchmark target is a process tree (``serve run`` starts Ray's processes as its descendants;
vLLM's server starts its engine as children). :class:`CpuMeter` snapshots every process of a tree
(user + system time) and :func:`cpu_between` turns two snapshots into CPU-seconds per role: the
HTTP front, the ingress replica, the LLM replica wrapper, the controller, Ray's system processes,
the engine. Dividing by the output tokens of the run gives CPU-seconds per 1,000 tokens; taking
off each role's idle rate (measured with the stack idle) gives the per-token part alone.

Linux only; a process that starts and ends between two snapshots is not seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# Roles, in the order reports list them. "engine" is vLLM's EngineCore and Workers.
ROLES = (
    "http front",
    "ingress replica",
    "llm replica",
    "controller",
    "ray system",
    "embeddings replica",
    "engine",
    "embeddings engine",
)
SERVING_ROLES = ("http front", "ingress replica", "llm replica", "controller")
# Every process but vLLM's EngineCore and Workers (the embeddings model's engine is one too: it is
# reported on its own line, as its idle polling takes CPU from the chat engine on small machines).
OUTSIDE_ENGINE = ("http front", "ingress replica", "llm replica", "controller", "ray system", "embeddings replica")


@dataclass(frozen=True, slots=True)
class ProcessSample:
    pid: int
    ppid: int
    name: str  # what the process calls itself (Ray and vLLM set their titles)
    cmdline: str
    ticks: int  # user + system CPU time, in clock ticks


def read_process(pid: int) -> ProcessSample | None:
    """One process's sample, or ``None`` if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The name sits in parentheses and may itself hold spaces or parentheses.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
    return ProcessSample(pid, ppid, name, cmdline, utime + stime)


def all_processes() -> list[ProcessSample]:
    samples = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            sample = read_process(int(entry))
            if sample is not None:
                samples.append(sample)
    return samples


def descendants(root: int, processes: Iterable[ProcessSample]) -> list[ProcessSample]:
    """``root`` and every process below it."""
    by_parent: dict[int, list[ProcessSample]] = {}
    everything = {p.pid: p for p in processes}
    for process in everything.values():
        by_parent.setdefault(process.ppid, []).append(process)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        if pid in everything:
            found.append(everything[pid])
        stack.extend(p.pid for p in by_parent.get(pid, []))
    return found


_REPLICA = re.compile(r"ServeReplica:[^:\s]+:(\S+)")


def classify(process: ProcessSample, parents: dict[int, ProcessSample]) -> str:
    """The role of one process of a benchmark target's tree."""
    title = process.cmdline or process.name
    if title.startswith("VLLM::") or process.name.startswith("VLLM::"):
        # Which engine: the nearest replica above it says (the chat or the embeddings model).
        parent = parents.get(process.ppid)
        while parent is not None:
            match = _REPLICA.search(parent.cmdline)
            if match:
                return "embeddings engine" if _is_embedding(match.group(1)) else "engine"
            parent = parents.get(parent.ppid)
        return "engine"
    if "vllm.entrypoints.openai.api_server" in title or "vllm serve" in title:
        return "http front"  # raw vLLM's whole server
    if "ProxyActor" in title or "HAProxyManager" in title or process.name == "haproxy" or "/haproxy " in title:
        return "http front"  # Serve's Python proxy, or HAProxy (its binary and the actor that runs it)
    if "ServeController" in title:
        return "controller"
    match = _REPLICA.search(title)
    if match:
        deployment = match.group(1)
        if _is_embedding(deployment):
            return "embeddings replica"
        if "Ingress" in deployment or "Router" in deployment:
            return "ingress replica"
        return "llm replica"
    if "deployments.local_server" in title:
        return "ingress replica"  # our ingress in-process (C) holds the engines' wrappers too
    return "ray system"


def _is_embedding(deployment: str) -> bool:
    return deployment.startswith("embed") or "Embedding" in deployment


Snapshot = dict[int, tuple[str, int]]  # pid -> (role, ticks)


class CpuMeter:
    """Snapshots of one target's process tree (``root`` is the server process we started)."""

    def __init__(self, root: int, exclude: Callable[[ProcessSample], bool] | None = None) -> None:
        self.root = root
        self.exclude = exclude or (lambda p: False)

    def snapshot(self) -> Snapshot:
        processes = all_processes()
        tree = descendants(self.root, processes)
        parents = {p.pid: p for p in processes}
        return {p.pid: (classify(p, parents), p.ticks) for p in tree if not self.exclude(p)}


def cpu_between(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU-seconds each role spent between two snapshots (new processes count from zero)."""
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, ticks) in after.items():
        start = before.get(pid, (role, 0))[1]
        spent[role] = spent.get(role, 0.0) + max(ticks - start, 0) / TICKS_PER_S
    return spent


def per_thousand_tokens(spent: dict[str, float], tokens: int) -> dict[str, float]:
    """CPU-seconds per 1,000 output tokens, per role."""
    return {role: (seconds * 1000 / tokens if tokens else 0.0) for role, seconds in spent.items()}


def marginal(spent: dict[str, float], idle_per_s: dict[str, float], wall_s: float) -> dict[str, float]:
    """What each role spent beyond its idle rate over ``wall_s`` (the part the load caused)."""
    return {role: max(seconds - idle_per_s.get(role, 0.0) * wall_s, 0.0) for role, seconds in spent.items()}


def totals(per_role: dict[str, float]) -> dict[str, float]:
    """The sums the benchmarks issue reports: serving processes, all outside the engine, engine."""
    return {
        "serving processes": sum(per_role.get(r, 0.0) for r in SERVING_ROLES),
        "all outside the engine": sum(per_role.get(r, 0.0) for r in OUTSIDE_ENGINE),
        "engine": per_role.get("engine", 0.0),
    }
