"""k8s/grafana-dashboard.json queries only metrics and labels the ingress exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from serve_app.edge.metrics import ALL_METRICS

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "grafana-dashboard.json"


def _exported_names() -> dict[str, tuple[str, ...]]:
    """Sample names of every metric (``_total`` for counters, ``_bucket`` etc. for histograms)."""
    names: dict[str, tuple[str, ...]] = {}
    for spec in ALL_METRICS:
        if spec.kind == "counter":
            names[f"{spec.name}_total"] = spec.labels
        elif spec.kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[spec.name + suffix] = spec.labels + (("le",) if suffix == "_bucket" else ())
        else:
            names[spec.name] = spec.labels
    return names


def test_every_query_uses_exported_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exported_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    used = set()
    for expr in exprs:
        # ${prefix} is "llm" (the ingress's /metrics) or "ray_llm" (Ray's export).
        concrete = expr.replace("${prefix}", "llm")
        for name in re.findall(r"\bllm_[a-z_]+", concrete):
            assert name in exported, (name, expr)
            used.add(name)
            labels = set(exported[name])
            for group in re.findall(r"by \(([^)]*)\)", concrete):
                assert {g.strip() for g in group.split(",")} <= labels, (group, expr)
            for selector in re.findall(rf"{name}\{{([^}}]*)\}}", concrete):
                assert {m.split("=")[0].strip() for m in selector.split(",")} <= labels, (selector, expr)
    for wanted in (
        "llm_requests_total", "llm_time_to_first_token_seconds_bucket", "llm_inter_token_latency_seconds_bucket",
        "llm_request_duration_seconds_bucket", "llm_requests_shed_total", "llm_deadline_exceeded_total",
        "llm_requests_in_flight", "llm_key_requests_total", "llm_key_tokens_total", "llm_completion_tokens_total",
    ):
        assert wanted in used, wanted
    assert sum("histogram_quantile(0.99" in e for e in exprs) >= 4
