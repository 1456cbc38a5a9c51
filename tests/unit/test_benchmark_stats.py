"""The benchmark's arithmetic: percentiles, per-request figures, run summaries and ratios."""

from __future__ import annotations

import pytest

from benchmarks.loadgen import RequestRecord, anthropic_event_text
from benchmarks.report import markdown
from benchmarks.run import ratios
from benchmarks.stats import percentile, summarise


def _record(start: float, token_times: list[float], end: float, ok: bool = True) -> RequestRecord:
    return RequestRecord(start=start, first_token=token_times[0] if token_times else None,
                         token_times=token_times, end=end, output_tokens=len(token_times), ok=ok)


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) is None


def test_request_figures() -> None:
    record = _record(10.0, [10.5, 10.6, 10.8], 11.0)
    assert record.ttft == pytest.approx(0.5)
    assert record.tpot == pytest.approx(0.25)  # (11.0 - 10.5) / 2 tokens after the first
    assert record.inter_token_latencies() == pytest.approx([0.1, 0.2])


def test_summary_counts_only_successes_and_goodput_applies_targets() -> None:
    records = [
        _record(0.0, [0.1, 0.2], 0.3),
        _record(0.0, [0.9, 1.0], 1.1),
        _record(0.0, [], 0.2, ok=False),
    ]
    summary = summarise(records, wall_s=2.0, ttft_target_s=0.5)
    assert (summary["requests"], summary["ok"]) == (3, 2)
    assert summary["output_tokens_per_s"] == pytest.approx(2.0)
    assert summary["goodput_requests_per_s"] == pytest.approx(0.5)  # only the first met the TTFT target


def test_ratios_and_markdown_from_rows() -> None:
    def row(scenario: str, target: str, tpot: float, tokens: float, ttft: float) -> dict:
        dist = {"mean": None, "p50": None, "p90": None, "p99": None}
        return {"scenario": scenario, "workload": "w", "api": "openai", "concurrency": 32, "target": target,
                "repeat": 0, "requests": 1, "ok": 1, "errors": [], "wall_s": 1.0, "requests_per_s": 1.0,
                "output_tokens_per_s": tokens, "goodput_requests_per_s": 1.0,
                "ttft_s": {**dist, "p50": ttft}, "tpot_s": {**dist, "p50": tpot}, "itl_s": dist, "e2e_s": dist}

    rows = [row("tpot-32", "B", 0.0206, 1000, 0.1), row("tpot-32", "C", 0.0200, 1000, 0.1),
            row("ceiling-32", "B", 0.001, 800, 0.1), row("ceiling-32", "C", 0.001, 1000, 0.1),
            row("ttft-1", "B", 0.02, 50, 0.030), row("ttft-1", "C", 0.02, 50, 0.024)]
    figures = {r["figure"].split(",")[0]: r["value"] for r in ratios("fake", rows)}
    assert figures["time per output token B/C"] == pytest.approx(1.03)
    assert figures["streamed-chunk ceiling B/C (tokens/s"] == pytest.approx(0.8)
    assert figures["time to first token B-C at 1 stream (ms"] == pytest.approx(6.0)
    text = markdown({"suite": "fake", "date": "d", "rows": rows, "ratios": ratios("fake", rows)})
    assert "| time per output token B/C, 32 streams, 20 ms/token | 1.030 | <= 1.03 |" in text


def test_anthropic_events_are_read_as_the_sdk_reads_them() -> None:
    record = RequestRecord(start=0.0)
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok0 "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok1 "}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}},
    ]
    assert "".join(anthropic_event_text(e, record) for e in events) == "tok0 tok1 "
    assert record.reported_tokens == 2 and not record.ok
    anthropic_event_text({"type": "message_stop"}, record)
    assert record.ok and not record.error
    anthropic_event_text({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, record)
    assert "overloaded_error" in record.error
