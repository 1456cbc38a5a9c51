"""The Ray Serve deployments that hold an engine: ``LLMServer`` and ``EmbeddingServer``.

One deployment per configured model; Serve autoscales its replicas, health-checks them
through ``check_health`` and cancels a streaming call's generator when the caller goes away,
which closes the engine's stream and aborts the request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.chunk_grouping import group_chunks
from deployments.engines.adapters import AdapterCache, AdapterCatalog
from deployments.engines.registry import build_engine
from deployments.keep_alive import NEVER, KeepAlive
from deployments.keep_alive_policy import KEEP_ALIVE_METRIC
from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
)

logger = logging.getLogger("ray.serve")


class _EngineReplica:
    """What both servers share: start the engine, report health, keep-alive, shut down."""

    async def __init__(
        self,
        card: dict[str, Any],
        engine_kind: str,
        engine_args: dict[str, Any],
        keep_alive: dict[str, Any] | None = None,
        adapters: dict[str, Any] | None = None,
    ) -> None:
        self.card = ModelCard.model_validate(card)
        catalog = AdapterCatalog.model_validate(adapters) if adapters is not None else None
        self.engine = build_engine(engine_kind, self.card, engine_args, catalog)
        await self.engine.start()
        # A model that scales to zero: idle until this deadline, then Serve may unload it.
        self._keep_alive = KeepAlive(**keep_alive) if keep_alive is not None else None
        self._until = self._keep_alive.until(time.time(), None) if self._keep_alive else NEVER
        logger.info("engine for %s started", self.card.name)

    def _touch(self, keep_alive_s: float | None) -> float:
        """A request ended (or a load was asked for): the idle deadline starts again from now."""
        if self._keep_alive is not None:
            self._until = self._keep_alive.until(time.time(), keep_alive_s)
        return self._until

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """For Serve's autoscaler (``deployments.keep_alive_policy``): when this replica may go."""
        return {KEEP_ALIVE_METRIC: self._until}

    async def load(self, keep_alive_s: float | None = None) -> float | None:
        """Ollama's load (no prompt): keep the model for ``keep_alive_s`` from now (0: unload).
        Returns the deadline, ``None`` when it never unloads."""
        until = self._touch(keep_alive_s)
        return None if until >= NEVER else until

    async def keep_alive_until(self) -> float | None:
        """The idle deadline (``None``: never), for ``/api/ps``."""
        return None if self._until >= NEVER else self._until

    async def check_health(self) -> None:
        """Raise when the engine is dead, so Serve replaces this replica."""
        await self.engine.check_health()

    async def engine_stats(self) -> dict[str, Any]:
        """Counters the engine keeps (the fake engine's starts, aborts, in-flight requests)."""
        stats: dict[str, Any] = {"replica": serve.get_replica_context().replica_id.unique_id}
        for name in ("starts", "completed", "tokens_generated", "requests_submitted"):
            if hasattr(self.engine, name):
                stats[name] = getattr(self.engine, name)
        for name in ("aborted", "in_flight"):
            if hasattr(self.engine, name):
                stats[name] = sorted(getattr(self.engine, name))
        cache = getattr(self.engine, "adapters", None)
        if isinstance(cache, AdapterCache):
            stats["adapters_held"] = cache.held()
            stats["adapter_loads"] = cache.loads
        unfinished = getattr(self.engine, "num_unfinished_requests", None)
        if callable(unfinished):
            stats["unfinished_requests"] = unfinished()
        return stats

    async def record_routing_stats(self) -> dict[str, Any]:
        """Read by the model's request router (Serve pushes it every few seconds): the engine's
        KV capacity in tokens and its own prefix-cache counters."""
        stats = getattr(self.engine, "routing_stats", None)
        return stats() if callable(stats) else {}

    async def __del__(self) -> None:
        await self.engine.shutdown()


@serve.deployment(name="LLMServer")
class LLMServer(_EngineReplica):
    """One model's generation replica."""

    async def __init__(
        self,
        card: dict[str, Any],
        engine_kind: str,
        engine_args: dict[str, Any],
        group_interval_s: float = 0.01,
        keep_alive: dict[str, Any] | None = None,
        adapters: dict[str, Any] | None = None,
    ) -> None:
        await super().__init__(card, engine_kind, engine_args, keep_alive, adapters)
        self.group_interval_s = group_interval_s
        if adapters is not None:
            # Serve's model multiplexing: the adapters this replica holds are reported to the
            # model's router, which sends an adapter's requests to a replica holding it. Its
            # LRU has the engine's capacity and sees the same requests in the same order, so
            # both evict alike; the engine does the loading and unloading.
            engine = self.engine

            async def hold_adapter(name: str) -> str:
                await engine.load_adapter(name)
                return name

            capacity = AdapterCatalog.model_validate(adapters).limits.capacity
            self._hold_adapter = serve.multiplexed(max_num_models_per_replica=capacity)(hold_adapter)

    async def _adapter_of(self, request: GenerationRequest) -> None:
        """Load the request's adapter (Serve notes it as held here) before the engine runs it."""
        if request.base_model is not None and hasattr(self, "_hold_adapter"):
            await self._hold_adapter(request.model)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        """Stream the generation as batches of chunks (first chunk at once).

        The first chunk carries ``queued_s``: from the ingress handing the request on to this
        replica starting it (Serve's routing and queue).
        """
        queued_s = None if request.submitted_at is None else max(time.time() - request.submitted_at, 0.0)
        first = True
        try:
            await self._adapter_of(request)
            async for batch in group_chunks(self.engine.generate(request), self.group_interval_s):
                if first and batch:
                    batch[0].queued_s = queued_s
                    first = False
                yield batch
        finally:
            self._touch(request.keep_alive_s)

    async def find_adapter(self, name: str) -> None:
        """404 unless this model has adapter ``name``; loads nothing."""
        await self.engine.find_adapter(name)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's tokens under this model's chat template (Anthropic's count_tokens)."""
        try:
            await self._adapter_of(request)
            return await self.engine.count_tokens(request)
        finally:
            self._touch(request.keep_alive_s)


@serve.deployment(name="EmbeddingServer")
class EmbeddingServer(_EngineReplica):
    """One embedding model's replica."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed every input of the request."""
        try:
            return await self.engine.embed(request)
        finally:
            self._touch(request.keep_alive_s)
