"""LoRA adapters on vLLM's ``AsyncLLM``: a mixin of :class:`deployments.engines.vllm_engine.VLLMEngine`.

vLLM batches requests for different adapters together (``enable_lora``); an adapter is added
with ``add_lora`` once (the engine's :class:`~deployments.engines.adapters.AdapterCache` makes
concurrent first requests share one load), evicted with ``remove_lora`` in LRU order, and each
request for it carries its ``LoRARequest``. vLLM is imported lazily, as in the engine module.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from deployments.engines.adapters import AdapterCache, AdapterCatalog, AdapterLoadFailed, find_adapter
from serve_app.core.errors import InvalidRequest, ServingError
from serve_app.core.internal_types import ModelCard

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


class VLLMAdapters:
    """Adapter loading for a vLLM generation engine."""

    card: ModelCard
    catalog: AdapterCatalog | None
    adapters: AdapterCache
    _lora_ids: dict[str, int]
    _engine: AsyncLLM | None

    if TYPE_CHECKING:  # provided by the engine (a stub here would shadow it)

        def _require_engine(self) -> AsyncLLM: ...

    def _lora_args(self) -> dict[str, Any]:
        return self.catalog.limits.vllm_engine_args() if self.catalog is not None else {}

    async def load_adapter(self, name: str) -> None:
        await self.adapters.get(name)

    async def unload_adapter(self, name: str) -> None:
        await self.adapters.evict(name)

    async def find_adapter(self, name: str) -> None:
        find_adapter(self.catalog, name)

    async def _add_lora(self, name: str) -> Any:
        """Check adapter ``name`` and load it into vLLM; its ``LoRARequest`` for generations."""
        from vllm.lora.request import LoRARequest

        if self.catalog is None:
            raise InvalidRequest(f"model '{self.card.name}' serves no adapters", param="model")
        location = self.catalog.locate(name)
        self.catalog.check(name, location)
        # One id per adapter name for the engine's lifetime (vLLM's cache is keyed by it).
        lora = LoRARequest(name, self._lora_ids.setdefault(name, len(self._lora_ids) + 1), location)
        try:
            await self._require_engine().add_lora(lora)
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - vLLM's reason, without the adapter's path
            logger.exception("adapter %s of %s failed to load", name, self.card.name)
            reason = str(exc).replace(location, name).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise AdapterLoadFailed(f"adapter '{name}' could not be loaded: {reason}", param="model") from None
        return lora

    async def _remove_lora(self, name: str) -> None:
        engine = self._engine
        if engine is not None and name in self._lora_ids:
            await engine.remove_lora(self._lora_ids[name])
