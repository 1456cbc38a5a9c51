"""Summaries of a run: percentiles, throughput, goodput."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.loadgen import RequestRecord


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (nearest rank on the sorted values), None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def _dist(values: list[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values) if values else None,
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
    }


def summarise(records: list[RequestRecord], wall_s: float, ttft_target_s: float | None = None,
              tpot_target_s: float | None = None) -> dict[str, Any]:
    """Per-run figures: latency distributions (seconds), requests/s, tokens/s, goodput."""
    ok = [r for r in records if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tpots = [r.tpot for r in ok if r.tpot is not None]
    itls = [gap for r in ok for gap in r.inter_token_latencies()]
    # The servers' own counts where they sent them (a frame may carry several tokens).
    tokens = sum(r.reported_tokens if r.reported_tokens is not None else r.output_tokens for r in ok)
    good = [
        r for r in ok
        if (ttft_target_s is None or (r.ttft is not None and r.ttft <= ttft_target_s))
        and (tpot_target_s is None or r.tpot is None or r.tpot <= tpot_target_s)
    ]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": sorted({r.error or str(r.status) for r in records if not r.ok})[:5],
        "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall_s if wall_s else 0.0,
        "goodput_requests_per_s": len(good) / wall_s if wall_s else 0.0,
        "ttft_s": _dist(ttfts),
        "tpot_s": _dist(tpots),
        "itl_s": _dist(itls),
        "e2e_s": _dist([r.e2e for r in ok]),
    }
