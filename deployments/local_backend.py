"""A :class:`serve_app.core.backend.Backend` over in-process engines, without Ray.

Used by the fast tests, by ``make run-fake`` style local serving, and by the benchmark that
isolates what Ray Serve adds (our ingress in-process versus through the graph).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping

from deployments.engines.base import Engine
from serve_app.core.errors import ModelNotFound, ModelUnavailable
from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelStatus,
)

logger = logging.getLogger(__name__)


class LocalBackend:
    """Routes each request to the engine of its (already resolved) model."""

    def __init__(self, engines: Mapping[str, Engine]) -> None:
        self.engines = dict(engines)
        self._failed: dict[str, str] = {}

    async def start(self) -> None:
        """Start every engine; one failing is recorded as ``failed``, the others still serve."""
        for name, engine in self.engines.items():
            try:
                await engine.start()
            except Exception as exc:  # noqa: BLE001 - any start failure marks the model failed
                logger.error("model %s failed to start: %s", name, exc)
                self._failed[name] = str(exc)

    def _engine(self, model: str) -> Engine:
        engine = self.engines.get(model)
        if engine is None:
            raise ModelNotFound(model)
        if model in self._failed:
            raise ModelUnavailable(f"model '{model}' failed to start; the reason is in the server log")
        return engine

    async def list_models(self) -> list[ModelStatus]:
        return [
            ModelStatus(
                card=engine.card,
                state="failed" if name in self._failed else "ready",
                replicas=0 if name in self._failed else 1,
                message=self._failed.get(name),
            )
            for name, engine in self.engines.items()
        ]

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        # An adapter's request goes to its base model's engine, which applies the adapter.
        stream = self._engine(request.base_model or request.model).generate(request)
        first = True
        try:
            async for chunk in stream:
                if first:
                    chunk.queued_s = 0.0  # no queue in front of an in-process engine
                first = False
                yield [chunk]
        finally:
            await stream.aclose()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        return await self._engine(request.model).embed(request)

    async def count_tokens(self, request: GenerationRequest) -> int:
        return await self._engine(request.base_model or request.model).count_tokens(request)

    async def find_adapter(self, model: str, base: str) -> None:
        await self._engine(base).find_adapter(model)

    async def load(self, model: str, keep_alive_s: float | None = None) -> float | None:
        """In-process engines are loaded at start and never unloaded."""
        self._engine(model)
        return None
