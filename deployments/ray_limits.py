"""Per-key limits shared by every ingress replica: one :class:`LimitBook` in a named Ray actor.

The actor is named after the Serve application, lives in the ``serve`` namespace and is
detached, so ingress replicas that come and go (autoscaling, restarts) all find the same one
(``get_if_exists=True``). Concurrency slots are leases that expire, so a replica that dies
holding some cannot leak them. If the actor cannot be reached the request is admitted (the
limits fail open) and the failure is logged.
"""

from __future__ import annotations

import logging
import time

import ray
from ray.actor import ActorHandle

from serve_app.edge.keys import KeyLimits
from serve_app.edge.limits import Admission, LimitBook

logger = logging.getLogger("ray.serve")

NAMESPACE = "serve"


@ray.remote(num_cpus=0, max_restarts=-1)
class KeyLimitsActor:
    """The cluster's one book of key limits (state is lost on restart: buckets start full)."""

    def __init__(self, lease_ttl_s: float) -> None:
        self.book = LimitBook(lease_ttl_s)

    def admit(self, limits: KeyLimits) -> Admission:
        return self.book.admit(limits, time.monotonic())

    def settle(self, limits: KeyLimits, lease: str | None, tokens: int) -> None:
        self.book.settle(limits, lease, tokens, time.monotonic())


def actor_name(app_name: str) -> str:
    """The limits actor's name for a Serve application."""
    return f"llm-key-limits-{app_name}"


class RayLimiter:
    """Implements :class:`serve_app.edge.limits.Limiter` over the shared :class:`KeyLimitsActor`."""

    def __init__(self, app_name: str, lease_ttl_s: float) -> None:
        self._name = actor_name(app_name)
        self._lease_ttl_s = lease_ttl_s
        self._actor: ActorHandle | None = None

    def _handle(self) -> ActorHandle:
        if self._actor is None:
            self._actor = KeyLimitsActor.options(  # type: ignore[attr-defined]
                name=self._name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
            ).remote(self._lease_ttl_s)
        return self._actor

    async def admit(self, limits: KeyLimits) -> Admission:
        try:
            return await self._handle().admit.remote(limits)
        except Exception:  # noqa: BLE001 - fail open rather than refuse every request
            logger.exception("key limits actor unavailable; admitting request of key %s", limits.name)
            self._actor = None
            return Admission(admitted=True)

    async def settle(self, limits: KeyLimits, lease: str | None, tokens: int) -> None:
        try:
            await self._handle().settle.remote(limits, lease, tokens)
        except Exception:  # noqa: BLE001 - a lost settle only costs an expired lease
            logger.exception("could not settle key %s with the key limits actor", limits.name)
            self._actor = None
