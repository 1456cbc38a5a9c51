"""The ingress's Prometheus metrics, from one registry per app, and a mirror protocol.

``GET /metrics`` renders this app's :class:`prometheus_client.CollectorRegistry` (one per app,
so many apps in one process never collide). Under Ray the same observations are also handed
to a :class:`MetricsMirror` (``deployments.ray_metrics`` implements it with
``ray.util.metrics``), so every ingress replica's figures reach Ray's metrics export.

Counters are declared without ``_total``; the Prometheus exposition adds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from serve_app.core.errors import DeadlineExceeded, Overloaded
from serve_app.edge.request_context import RequestContext

MetricKind = Literal["counter", "gauge", "histogram"]
CONTENT_TYPE = CONTENT_TYPE_LATEST

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name (no ``_total``), kind, help text, labels and histogram buckets."""

    name: str
    kind: MetricKind
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = MetricSpec(
    "llm_requests", "counter", "Requests by model, API, route, HTTP status and outcome.",
    ("model", "api", "route", "status", "outcome"),
)
IN_FLIGHT = MetricSpec("llm_requests_in_flight", "gauge", "Requests being served now.", ("api",))
TTFT = MetricSpec(
    "llm_time_to_first_token_seconds", "histogram", "Arrival to first generated token.",
    ("model", "api"), TTFT_BUCKETS,
)
ITL = MetricSpec(
    "llm_inter_token_latency_seconds", "histogram", "Time between generated tokens.",
    ("model", "api"), ITL_BUCKETS,
)
E2E = MetricSpec(
    "llm_request_duration_seconds", "histogram", "Arrival to last byte sent (end-to-end latency).",
    ("model", "api", "route"), E2E_BUCKETS,
)
QUEUE = MetricSpec(
    "llm_queue_wait_seconds", "histogram", "Ingress submission to the model replica starting it.",
    ("model", "api"), QUEUE_BUCKETS,
)
PROMPT_TOKENS = MetricSpec("llm_prompt_tokens", "counter", "Prompt tokens processed.", ("model", "api"))
COMPLETION_TOKENS = MetricSpec("llm_completion_tokens", "counter", "Completion tokens generated.", ("model", "api"))
SHED = MetricSpec(
    "llm_requests_shed", "counter", "Requests refused by back-pressure (load shedding, 429/503).",
    ("model", "api", "status"),
)
DEADLINE = MetricSpec(
    "llm_deadline_exceeded", "counter",
    "Generations cut by the server's deadline (phase: before_first_byte = 504, in_band).",
    ("model", "api", "phase"),
)
RATE_LIMITED = MetricSpec(
    "llm_key_rate_limited", "counter", "Requests refused by a key's limit.", ("key", "limit"),
)
KEY_REQUESTS = MetricSpec(
    "llm_key_requests", "counter", "Requests per API key name.", ("key", "model", "outcome"),
)
KEY_TOKENS = MetricSpec(
    "llm_key_tokens", "counter", "Tokens per API key name (kind: prompt, completion).", ("key", "model", "kind"),
)

ALL_METRICS: tuple[MetricSpec, ...] = (
    REQUESTS, IN_FLIGHT, TTFT, ITL, E2E, QUEUE, PROMPT_TOKENS, COMPLETION_TOKENS,
    SHED, DEADLINE, RATE_LIMITED, KEY_REQUESTS, KEY_TOKENS,
)


class MetricsMirror(Protocol):
    """Somewhere else the same observations go (Ray's metrics export under Serve)."""

    def define(self, specs: Sequence[MetricSpec]) -> None:
        """Declare every metric once, before any observation."""
        ...

    def inc(self, spec: MetricSpec, labels: dict[str, str], amount: float = 1.0) -> None:
        """Add ``amount`` to a counter, or to a gauge (``amount`` may be negative)."""
        ...

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        """One histogram observation."""
        ...


class ServingMetrics:
    """The app's metrics; :meth:`finish` records a whole request from its context."""

    def __init__(self, mirror: MetricsMirror | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._mirror = mirror
        self._metrics: dict[str, Counter | Gauge | Histogram] = {}
        for spec in ALL_METRICS:
            kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[spec.kind]
            extra = {"buckets": spec.buckets} if spec.kind == "histogram" else {}
            self._metrics[spec.name] = kind(
                spec.name, spec.description, spec.labels, registry=self.registry, **extra
            )
        if mirror is not None:
            mirror.define(ALL_METRICS)

    def render(self) -> bytes:
        """This app's metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def _inc(self, spec: MetricSpec, labels: dict[str, str], amount: float = 1.0) -> None:
        metric = self._metrics[spec.name].labels(**labels)
        metric.inc(amount)  # type: ignore[union-attr]
        if self._mirror is not None:
            self._mirror.inc(spec, labels, amount)

    def _observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        self._metrics[spec.name].labels(**labels).observe(value)  # type: ignore[union-attr]
        if self._mirror is not None:
            self._mirror.observe(spec, labels, value)

    def start(self, ctx: RequestContext) -> None:
        """A request arrived (counts it in flight)."""
        self._inc(IN_FLIGHT, {"api": ctx.api})

    def finish(self, ctx: RequestContext, was_in_flight: bool = True) -> None:
        """A request ended: record everything its context holds, once.

        ``was_in_flight`` is false for requests the edge refused before serving them.
        """
        if was_in_flight:
            self._inc(IN_FLIGHT, {"api": ctx.api}, -1.0)
        model, api = ctx.model, ctx.api
        outcome = ctx.outcome()
        status = str(ctx.status) if ctx.status is not None else "none"
        self._inc(REQUESTS, {"model": model, "api": api, "route": ctx.route, "status": status, "outcome": outcome})
        self._observe(E2E, {"model": model, "api": api, "route": ctx.route}, ctx.duration_s)
        by_model = {"model": model, "api": api}
        if ctx.ttft_s is not None:
            self._observe(TTFT, by_model, ctx.ttft_s)
        for gap in ctx.token_gaps:
            self._observe(ITL, by_model, gap)
        if ctx.queued_s is not None:
            self._observe(QUEUE, by_model, max(ctx.queued_s, 0.0))
        if ctx.prompt_tokens:
            self._inc(PROMPT_TOKENS, by_model, ctx.prompt_tokens)
        if ctx.completion_tokens:
            self._inc(COMPLETION_TOKENS, by_model, ctx.completion_tokens)
        if isinstance(ctx.error, Overloaded):
            self._inc(SHED, {**by_model, "status": str(ctx.error.status)})
        if isinstance(ctx.error, DeadlineExceeded):
            self._inc(DEADLINE, {**by_model, "phase": "in_band" if ctx.in_band else "before_first_byte"})
        key = ctx.key_name
        if key is None:
            return
        if ctx.rejected_limit is not None:
            self._inc(RATE_LIMITED, {"key": key, "limit": ctx.rejected_limit})
        self._inc(KEY_REQUESTS, {"key": key, "model": model, "outcome": outcome})
        if ctx.prompt_tokens:
            self._inc(KEY_TOKENS, {"key": key, "model": model, "kind": "prompt"}, ctx.prompt_tokens)
        if ctx.completion_tokens:
            self._inc(KEY_TOKENS, {"key": key, "model": model, "kind": "completion"}, ctx.completion_tokens)
