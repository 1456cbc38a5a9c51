"""k8s/grafana-dashboard.json queries only the metrics and labels the ingress exports through Ray
(``ray_llm_*``: the cluster-wide path), and no other source."""

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
    assert "${prefix}" not in DASHBOARD.read_text()  # one source: Ray's export
    for expr in exprs:
        assert not re.search(r"(?<!ray_)\bllm_", expr), expr  # never one replica's own /metrics
        # Ray exports each metric under its own name with "ray_" in front (and a replica label).
        concrete = expr.replace("ray_llm_", "llm_")
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
