"""Ollama's ``keep_alive`` for models that scale to zero: how long an idle model stays loaded.

A replica of such a model keeps one deadline, ``until``: each request that ends (or an explicit
load) sets it from the request's ``keep_alive`` within the config's limits, and the replica
reports it to Serve's autoscaler, whose policy (``deployments.keep_alive_policy``) lets the
model scale to zero once the deadline has passed and nothing is in flight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Reported for "never unload" (custom autoscaling metrics must be finite numbers).
NEVER = 1e18


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """The limits one model's config sets (``scale_to_zero:``)."""

    default_s: float
    max_s: float | None  # None: a negative keep_alive keeps the model loaded for good

    def seconds(self, requested: float | None) -> float:
        """The idle time granted for a request's ``keep_alive`` (``None``: the model's default)."""
        wanted = self.default_s if requested is None else requested
        if wanted < 0:
            return math.inf if self.max_s is None else self.max_s
        return wanted if self.max_s is None else min(wanted, self.max_s)

    def until(self, now: float, requested: float | None) -> float:
        """The deadline after a request ending at ``now`` (``NEVER`` when it never unloads)."""
        granted = self.seconds(requested)
        return NEVER if math.isinf(granted) else now + granted
