"""Where each serving process's CPU goes: py-spy on every process of a target while it is under load.

    python -m benchmarks.profile --pid PID_OF_SERVE_RUN --seconds 20 --out DIR

samples every Python process of the tree (proxy, ingress, LLM replica, controller, Ray's Python
helpers) at once with ``py-spy record --format raw`` (collapsed stacks, idle frames left out),
and prints per role the functions that hold the most samples, by own time and by total time
(files shortened to their package). Load the target meanwhile (``benchmarks.loadgen`` or
``benchmarks.run``); ``--load URL`` runs a 32-stream chat load for the duration itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.cpu_accounting import all_processes, classify, descendants

PY_SPY = Path(sys.executable).parent / "py-spy"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def shorten(frame: str) -> str:
    """``func (…/site-packages/ray/serve/_private/replica.py:123)`` -> ``func (ray/serve/_private/replica.py)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "/work/main/", "/lib/python3.11/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{match.group('func')} ({file})"


def summarise(collapsed: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Samples, the top frames by own samples, and the top frames by total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [shorten(f) for f in stack.split(";") if f and not f.startswith("thread ") and not f.startswith("process ")]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return samples, own.most_common(top), total.most_common(top)


async def chat_load(url: str, seconds: float, streams: int = 32) -> None:
    import httpx

    body = {"model": "smollm2:135m", "stream": True, "max_tokens": 512, "ignore_eos": True,
            "messages": [{"role": "user", "content": "hi"}]}
    deadline = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                async for _ in reply.aiter_lines():
                    pass

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(streams)), return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pid", type=int, required=True, help="root of the target's process tree")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("profiles"))
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--load", default=None, help="run a 32-stream chat load against this URL meanwhile")
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    processes = all_processes()
    parents = {p.pid: p for p in processes}
    roles = {p.pid: classify(p, parents) for p in descendants(options.pid, processes)}
    python = {pid: role for pid, role in roles.items() if role != "engine" and "python" in parents[pid].cmdline.lower()
              or parents[pid].cmdline.startswith("ray::")}
    runs = []
    for pid, role in python.items():
        out = options.out / f"{role.replace(' ', '_')}-{pid}.txt"
        cmd = [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(int(options.seconds)), "--rate",
               str(options.rate), "--format", "raw", "--output", str(out), "--nonblocking"]
        runs.append((role, pid, out, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    if options.load:
        asyncio.run(chat_load(options.load, options.seconds))
    for role, pid, out, proc in runs:
        proc.wait()
        if not out.exists():
            continue
        samples, own, total = summarise(out, options.top)
        if samples < options.rate:  # under a second of CPU: not where the time goes
            continue
        print(f"\n## {role} (pid {pid}): {samples} samples ({samples / options.rate:.1f} s of CPU)")
        print("own time:")
        for frame, n in own:
            print(f"  {100 * n / samples:5.1f}%  {frame}")
        print("total time:")
        for frame, n in total:
            print(f"  {100 * n / samples:5.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
