"""Per-key limits: requests and tokens per minute (token buckets) and concurrent requests.

:class:`LimitBook` is the pure bookkeeping (a clock is passed in); :class:`Limiter` is the
async protocol the edge talks to. :class:`InProcessLimiter` keeps the book in this process;
``deployments.ray_limits`` keeps one book in a named Ray actor, so the limits hold across the
ingress replicas of a cluster.

Buckets hold ``burst`` (default: the per-minute figure) and refill at per-minute / 60 per
second, so a refused client is told to come back as soon as one request (or token) is there,
which keeps ``Retry-After`` short and honest. Tokens are charged after a request finishes
(prompt + completion) and may drive the bucket below zero: later requests wait until it refills.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from serve_app.edge.keys import KeyLimits

# A concurrency refusal cannot know when a slot frees up; this is the hint we give.
CONCURRENCY_RETRY_AFTER_S = 1.0


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` units, refilled at ``rate`` per second; the level may go negative."""

    capacity: float
    rate: float
    level: float
    updated: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity=capacity, rate=rate, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` units are there (0 when they already are)."""
        self.refill(now)
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float, now: float) -> None:
        """Remove ``amount`` (the level may go below zero)."""
        self.refill(now)
        self.level -= amount


@dataclass(frozen=True, slots=True)
class Admission:
    """A limiter's answer: admitted (with a lease to settle) or refused with a wait."""

    admitted: bool
    lease: str | None = None
    limit: str | None = None  # requests_per_minute | tokens_per_minute | max_concurrent
    retry_after_s: float = 0.0


@dataclass(slots=True)
class _KeyState:
    limits: KeyLimits
    requests: TokenBucket | None
    tokens: TokenBucket | None
    leases: dict[str, float] = field(default_factory=dict)  # lease -> expiry


class LimitBook:
    """The state of every key's limits; pure and synchronous (the caller supplies ``now``)."""

    def __init__(self, lease_ttl_s: float = 660.0) -> None:
        self.lease_ttl_s = lease_ttl_s
        self._keys: dict[str, _KeyState] = {}

    def _state(self, limits: KeyLimits, now: float) -> _KeyState:
        state = self._keys.get(limits.name)
        if state is None or state.limits != limits:
            # New key, or its limits changed (a redeploy): start from full buckets, keep leases.
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            requests = TokenBucket.full(limits.burst or rpm, rpm / 60.0, now) if rpm else None
            tokens = TokenBucket.full(limits.tokens_burst or tpm, tpm / 60.0, now) if tpm else None
            leases = state.leases if state is not None else {}
            state = self._keys[limits.name] = _KeyState(limits, requests, tokens, leases)
        return state

    def admit(self, limits: KeyLimits, now: float) -> Admission:
        """Take a request slot of ``limits.name`` now, or say which limit refuses and for how long."""
        state = self._state(limits, now)
        waits: list[tuple[float, str]] = []
        if state.requests is not None:
            wait = state.requests.wait_for(1.0, now)
            if wait > 0:
                waits.append((wait, "requests_per_minute"))
        if state.tokens is not None:
            # Any positive level lets a request in; it is charged what it used when it ends.
            wait = state.tokens.wait_for(min(1.0, state.tokens.capacity), now)
            if wait > 0:
                waits.append((wait, "tokens_per_minute"))
        if limits.max_concurrent is not None:
            for lease, expiry in list(state.leases.items()):
                if expiry <= now:
                    del state.leases[lease]  # its holder died without releasing it
            if len(state.leases) >= limits.max_concurrent:
                waits.append((CONCURRENCY_RETRY_AFTER_S, "max_concurrent"))
        if waits:
            wait, limit = max(waits)
            return Admission(admitted=False, limit=limit, retry_after_s=wait)
        if state.requests is not None:
            state.requests.take(1.0, now)
        lease = None
        if limits.max_concurrent is not None:
            lease = uuid.uuid4().hex
            state.leases[lease] = now + self.lease_ttl_s
        return Admission(admitted=True, lease=lease)

    def settle(self, limits: KeyLimits, lease: str | None, tokens: int, now: float) -> None:
        """The request ended: free its slot and charge the tokens it used."""
        state = self._state(limits, now)
        if lease is not None:
            state.leases.pop(lease, None)
        if state.tokens is not None and tokens > 0:
            state.tokens.take(float(tokens), now)


@runtime_checkable
class Limiter(Protocol):
    """Where the edge asks for, and gives back, a key's request slots."""

    async def admit(self, limits: KeyLimits) -> Admission:
        """Admit one request of this key, or refuse it with the wait."""
        ...

    async def settle(self, limits: KeyLimits, lease: str | None, tokens: int) -> None:
        """Release the request's slot and charge its tokens (called exactly once per admission)."""
        ...


class InProcessLimiter:
    """Limits kept in this process (one ingress replica, tests, the local server)."""

    def __init__(self, lease_ttl_s: float = 660.0) -> None:
        self.book = LimitBook(lease_ttl_s)

    async def admit(self, limits: KeyLimits) -> Admission:
        return self.book.admit(limits, time.monotonic())

    async def settle(self, limits: KeyLimits, lease: str | None, tokens: int) -> None:
        self.book.settle(limits, lease, tokens, time.monotonic())


def retry_after_headers(wait_s: float) -> dict[str, str]:
    """``Retry-After`` (whole seconds, at least 1, per HTTP) and the exact ``retry-after-ms``.

    The OpenAI SDKs read ``retry-after-ms`` first, so they come back as soon as allowed.
    """
    wait_s = max(wait_s, 0.001)
    return {"retry-after": str(max(1, math.ceil(wait_s))), "retry-after-ms": str(math.ceil(wait_s * 1000))}
