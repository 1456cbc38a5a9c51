"""Serve's autoscaling policy for models that scale to zero, honouring ``keep_alive``.

Serve's own queue-length policy decides, except that an idle model keeps one replica until the
deadline its replicas report (``keep_alive_until``, see ``deployments.keep_alive``) has passed.
Serve cloudpickles this module by value into its controller, so it imports Ray and the standard
library only.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

KEEP_ALIVE_METRIC = "keep_alive_until"


def latest_deadline(ctx: AutoscalingContext) -> float | None:
    """The latest deadline any replica reported last (``None`` before any report)."""
    series = (ctx.raw_metrics or {}).get(KEEP_ALIVE_METRIC) or {}
    latest = [points[-1].value for points in series.values() if points]
    return max(latest) if latest else None


def keep_alive_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Serve's decision, held at one replica while an idle model's keep-alive runs."""
    desired, state = replica_queue_length_autoscaling_policy(ctx)
    if ctx.current_num_replicas == 0 or ctx.total_num_requests > 0:
        return desired, state
    deadline = latest_deadline(ctx)
    if deadline is None or deadline > time.time():
        desired = max(desired, 1)
    return (math.ceil(desired) if desired else 0), state
