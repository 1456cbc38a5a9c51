"""The end of every request: limiter slot released, tokens charged, metrics, one usage line.

:meth:`Accounting.finish` runs exactly once per request, in the edge, after the response has
been sent in full (streams included) or the client went away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from serve_app.edge.limits import Limiter
from serve_app.edge.metrics import ServingMetrics
from serve_app.edge.request_context import RequestContext

usage_logger = logging.getLogger("serve_app.usage")
logger = logging.getLogger(__name__)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def usage_record(ctx: RequestContext) -> dict[str, Any]:
    """The usage line of a finished request (no prompt, no output, no key: the key's name)."""
    return {
        "event": "usage",
        "request_id": ctx.request_id,
        "key": ctx.key_name,
        "model": ctx.model or None,
        "api": ctx.api,
        "method": ctx.method,
        "route": ctx.route,
        "status": ctx.status,
        "outcome": ctx.outcome(),
        "error_code": ctx.error_code(),
        "limit": ctx.rejected_limit,
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
        "queue_ms": _ms(ctx.queued_s),
        "ttft_ms": _ms(ctx.ttft_s),
        "duration_ms": _ms(ctx.duration_s),
    }


class Accounting:
    """What the edge does at the start and the end of every accounted request."""

    def __init__(self, metrics: ServingMetrics, limiter: Limiter, usage_log: bool = True) -> None:
        self.metrics = metrics
        self.limiter = limiter
        self.usage_log = usage_log

    def start(self, ctx: RequestContext) -> None:
        """The request was admitted and is about to be served."""
        self.metrics.start(ctx)

    async def finish(self, ctx: RequestContext, started: bool) -> None:
        """Settle the limiter, record the metrics and write the usage line (once)."""
        ctx.finished_at = time.monotonic()
        ctx.settle_counts()
        if ctx.key is not None and ctx.key.limits.limited and ctx.rejected_limit is None:
            await self._settle(ctx)
        self.metrics.finish(ctx, was_in_flight=started)
        if self.usage_log:
            usage_logger.info(json.dumps(usage_record(ctx), separators=(",", ":")))

    async def _settle(self, ctx: RequestContext) -> None:
        assert ctx.key is not None
        tokens = ctx.prompt_tokens + ctx.completion_tokens
        # Shielded: a second cancellation (Serve cancelling a disconnected request) must not
        # leak the concurrency slot.
        task = asyncio.ensure_future(self.limiter.settle(ctx.key.limits, ctx.lease, tokens))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001 - a limiter outage must not fail the request's ending
            logger.exception("could not settle the limits of key %s", ctx.key_name)
