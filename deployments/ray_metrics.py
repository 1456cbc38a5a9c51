"""The ingress's metrics mirrored to Ray's metrics export (``ray.util.metrics``).

Every ingress replica records into its own Prometheus registry (``GET /metrics`` answers for
the replica that serves the scrape); this mirror sends the same observations to Ray, whose
per-node metrics agents Prometheus scrapes for the whole cluster. Ray prefixes names with
``ray_`` (``ray_llm_requests_total``, ``ray_llm_time_to_first_token_seconds_bucket``...) and
adds its own tags (``SessionName``, ``NodeAddress``...); the mirror adds ``replica`` so that
replicas sharing a node never overwrite each other's gauges.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from ray.util import metrics as ray_metrics

from serve_app.edge.metrics import MetricSpec

logger = logging.getLogger("ray.serve")


class RayMetricsMirror:
    """Implements :class:`serve_app.edge.metrics.MetricsMirror` with Ray's Counter/Gauge/Histogram."""

    def __init__(self, replica: str = "") -> None:
        self._replica = replica
        self._metrics: dict[str, ray_metrics.Counter | ray_metrics.Gauge | ray_metrics.Histogram] = {}
        # Ray gauges are set, not incremented: keep the running values here.
        self._gauge_values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()

    def define(self, specs: Sequence[MetricSpec]) -> None:
        for spec in specs:
            if spec.name in self._metrics:
                continue
            tag_keys = (*spec.labels, "replica")
            if spec.kind == "counter":
                metric: ray_metrics.Counter | ray_metrics.Gauge | ray_metrics.Histogram = ray_metrics.Counter(
                    spec.name, spec.description, tag_keys
                )
            elif spec.kind == "gauge":
                metric = ray_metrics.Gauge(spec.name, spec.description, tag_keys)
            else:
                metric = ray_metrics.Histogram(spec.name, spec.description, list(spec.buckets), tag_keys)
            metric.set_default_tags({"replica": self._replica})
            self._metrics[spec.name] = metric

    def inc(self, spec: MetricSpec, labels: dict[str, str], amount: float = 1.0) -> None:
        metric = self._metrics.get(spec.name)
        if metric is None:
            return
        try:
            if isinstance(metric, ray_metrics.Gauge):
                key = (spec.name, tuple(sorted(labels.items())))
                with self._lock:
                    value = self._gauge_values[key] = self._gauge_values.get(key, 0.0) + amount
                metric.set(value, tags=labels)
            elif amount > 0 and isinstance(metric, ray_metrics.Counter):
                metric.inc(amount, tags=labels)
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            logger.exception("could not mirror metric %s to Ray", spec.name)

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        metric = self._metrics.get(spec.name)
        if not isinstance(metric, ray_metrics.Histogram):
            return
        try:
            metric.observe(value, tags=labels)
        except Exception:  # noqa: BLE001 - metrics must never fail a request
            logger.exception("could not mirror metric %s to Ray", spec.name)
