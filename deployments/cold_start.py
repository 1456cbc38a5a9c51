"""The ingress's side of a model that scales to zero: a bounded wait while it loads.

Serve itself queues requests for a deployment with no replica and starts one (one load, however
many requests arrive). What it does not bound is how many wait and for how long: a
:class:`ColdStartGate` per on-demand model admits at most ``load_queue_limit`` requests while
the model may be loading, each for ``load_timeout_s`` until its first result; past either it
answers 503 with ``Retry-After`` (never a 5xx of the cold start itself). Once a request got its
first result the model counts as loaded, until the keep-alive this ingress last granted ends;
requests then pass straight through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from deployments.keep_alive import NEVER, KeepAlive
from serve_app.core.errors import ModelUnavailable

T = TypeVar("T")


class ColdStartGate:
    """Admission and waiting for one on-demand model (see the module docstring)."""

    def __init__(self, model: str, settings: dict[str, Any], retry_after: str) -> None:
        self.model = model
        self.keep_alive = KeepAlive(default_s=settings["keep_alive_s"], max_s=settings["max_keep_alive_s"])
        self.load_timeout_s = float(settings["load_timeout_s"])
        self.queue_limit = int(settings["load_queue_limit"])
        self.waiting = 0
        self.loaded_until = 0.0  # this ingress's view: loaded until then
        self._headers = {"retry-after": retry_after}

    def loaded(self) -> bool:
        return time.time() < self.loaded_until

    def expires_at(self) -> float | None:
        """When the model unloads if left idle, as far as this ingress knows (None: never).

        A model this ingress has not served yet (another ingress loaded it) shows the default."""
        until = self.loaded_until if self.loaded_until > 0 else self.keep_alive.until(time.time(), None)
        return None if until >= NEVER else until

    def note_loaded(self, until: float | None) -> None:
        self.loaded_until = NEVER if until is None else until

    def note_finished(self, keep_alive_s: float | None) -> None:
        """A request got its first result or ended: the replica restarts its idle deadline by the
        same rule (in flight, the model cannot unload)."""
        self.loaded_until = self.keep_alive.until(time.time(), keep_alive_s)

    def note_unloaded(self) -> None:
        self.loaded_until = 0.0

    @asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """Hold a place in the load queue (503 when it is full)."""
        if self.waiting >= self.queue_limit:
            raise ModelUnavailable(
                f"model '{self.model}' is loading and {self.queue_limit} requests already wait for it; "
                f"retry after {self._headers['retry-after']} s",
                headers=self._headers,
            )
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1

    async def first(self, awaitable: Awaitable[T]) -> T:
        """The first result of a request, or 503 once the load has taken ``load_timeout_s``."""
        try:
            return await asyncio.wait_for(awaitable, self.load_timeout_s)
        except TimeoutError:
            raise ModelUnavailable(
                f"model '{self.model}' did not finish loading within {self.load_timeout_s:g} s; retry later",
                headers=self._headers,
            ) from None
