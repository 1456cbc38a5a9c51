"""The ingress deployment: the FastAPI app of ``serve_app`` over Ray Serve handles."""

from __future__ import annotations

import logging
import logging.handlers
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.ray_backend import RayBackend
from deployments.ray_limits import RayLimiter
from deployments.ray_metrics import RayMetricsMirror
from deployments.routing_metrics import RoutingCollector
from serve_app.app import create_app
from serve_app.core.internal_types import ModelCard
from serve_app.settings import IngressSettings


class WriteThrough(logging.Handler):
    """One of Serve's buffered replica log handlers, without its buffer.

    In throughput-optimised mode Serve buffers request-path records and writes them per 1,000
    (or on an ERROR): usage lines would reach the log tens of minutes late under light traffic,
    and a killed replica would lose them all. This handler applies the buffered handler's filters
    (request context, replica fields) and writes each record to its file at once, so usage lines
    are never lost; Serve's own access logs stay buffered.
    """

    def __init__(self, buffered: logging.handlers.MemoryHandler) -> None:
        super().__init__()
        self.buffered = buffered
        self.filters = list(buffered.filters)

    def emit(self, record: logging.LogRecord) -> None:
        target = self.buffered.target
        if target is not None:
            target.handle(record)  # the file handler formats, writes and flushes the line


def _route_usage_log_to_serve_logs() -> None:
    """Write ``serve_app.usage`` lines to Serve's replica log (file and stderr), unbuffered."""
    usage = logging.getLogger("serve_app.usage")
    if usage.handlers:
        return
    usage.setLevel(logging.INFO)
    for handler in logging.getLogger("ray.serve").handlers:
        if isinstance(handler, logging.handlers.MemoryHandler):
            usage.addHandler(WriteThrough(handler))
        else:
            usage.addHandler(handler)
    usage.propagate = False


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Routes each request by ``model`` to that model's deployment."""

    def __init__(
        self,
        handles: dict[str, DeploymentHandle],
        cards: list[dict[str, Any]],
        deployment_names: dict[str, str],
        settings: dict[str, Any],
        retry_after_s: float,
        on_demand: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self._cards = [ModelCard.model_validate(c) for c in cards]
        # Settings are read here, in the replica, so LLM_* secrets come from its environment.
        self._settings = IngressSettings(**{"echo_request_id": False, **settings})
        if self._settings.usage_log:
            _route_usage_log_to_serve_logs()
        context = serve.get_replica_context()
        app_name = context.app_name
        self._replica = context.replica_id.unique_id
        self._backend = RayBackend(
            handles,
            self._cards,
            deployment_names,
            app_name=app_name,
            retry_after_s=retry_after_s,
            on_demand=on_demand,
        )
        # Key limits hold across every ingress replica of the application.
        self._limiter = RayLimiter(app_name, self._settings.lease_ttl_s())

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(
            self._backend,
            self._cards,
            self._settings,
            limiter=self._limiter,
            metrics_mirror=RayMetricsMirror(replica=self._replica),
            collectors=[RoutingCollector()],
        )
