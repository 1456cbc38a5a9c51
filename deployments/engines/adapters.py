"""LoRA adapters of one base model: where each comes from, whether the base can take it, and
which ones a replica holds.

A generate model lists its adapters in config.yaml (``adapters:``, each with a source like a
model's) and may name an adapter folder, from which ``<base>:<adapter>`` is loaded on first
use. :class:`AdapterCatalog` finds an adapter's files and checks its ``adapter_config.json``
against the limits; :class:`AdapterCache` holds the loaded ones in LRU order up to the
replica's capacity, and loads each once however many requests ask for it together.

Plain pydantic and asyncio: config validation imports this module without vLLM or Ray.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.model_sources import ModelSource, ModelSourceError, source_path
from serve_app.core.errors import InvalidRequest, ModelNotFound
from serve_app.core.model_names import is_adapter_folder_name

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class AdapterLoadFailed(InvalidRequest):
    """An adapter the base model cannot take (rank, target modules, missing or bad files).

    A 400 naming the adapter; the base model and its other adapters keep serving.
    """

    code = "adapter_load_failed"


class LoraLimits(BaseModel):
    """How many adapters a replica of the base holds and how large they may be (vLLM's
    ``max_loras``, ``max_lora_rank``, ``max_cpu_loras``)."""

    model_config = ConfigDict(extra="forbid")

    max_loras: int = Field(default=4, ge=1, description="Adapters in one batch (vLLM's GPU/CPU LoRA slots).")
    # vLLM allocates LoRA slots for exactly these ranks.
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        default=16, description="The largest rank an adapter may have."
    )
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters a replica keeps loaded, LRU beyond (default: max_loras)."
    )

    @model_validator(mode="after")
    def _cpu_holds_batch(self) -> LoraLimits:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("max_cpu_loras must be at least max_loras")
        return self

    @property
    def capacity(self) -> int:
        """Adapters one replica holds at once."""
        return self.max_cpu_loras or self.max_loras

    def vllm_engine_args(self) -> dict[str, Any]:
        """vLLM's engine arguments for these limits."""
        return {"enable_lora": True, "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank,
                "max_cpu_loras": self.capacity}


class AdapterInfo(BaseModel):
    """What an adapter's ``adapter_config.json`` says (PEFT's format)."""

    model_config = ConfigDict(extra="ignore")

    rank: int = Field(alias="r", ge=1)
    target_modules: list[str] | str | None = None
    base_model_name_or_path: str | None = None


def read_adapter_info(folder: Path, name: str) -> AdapterInfo:
    """The adapter's PEFT config, or :class:`AdapterLoadFailed` naming ``name``."""
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise AdapterLoadFailed(f"adapter '{name}' has no {ADAPTER_CONFIG}: it is not a PEFT LoRA adapter", param="model")
    try:
        return AdapterInfo.model_validate(json.loads(config.read_text()))
    except (ValueError, OSError) as exc:
        raise AdapterLoadFailed(f"adapter '{name}' has an unreadable {ADAPTER_CONFIG}: {type(exc).__name__}",
                                param="model") from None


def check_adapter_info(info: AdapterInfo, name: str, limits: LoraLimits, modules: frozenset[str] | None) -> None:
    """Refuse an adapter the base cannot take: a rank over the limit, or target modules the
    base has none of (``modules``: the base's module names; ``None`` skips that check)."""
    if info.rank > limits.max_lora_rank:
        raise AdapterLoadFailed(
            f"adapter '{name}' has rank {info.rank}, over this model's max_lora_rank {limits.max_lora_rank}",
            param="model",
        )
    targets = [info.target_modules] if isinstance(info.target_modules, str) else info.target_modules or []
    unknown = sorted(t for t in targets if modules is not None and t not in modules)
    if unknown:
        raise AdapterLoadFailed(
            f"adapter '{name}' targets modules the base model does not have: {', '.join(unknown)}", param="model"
        )


class AdapterCatalog(BaseModel):
    """The adapters one base model can serve: those listed, and those in its folder."""

    model_config = ConfigDict(extra="forbid")

    base: str
    limits: LoraLimits = Field(default_factory=LoraLimits)
    listed: dict[str, ModelSource] = Field(default_factory=dict)  # canonical name -> source
    folder: str | None = None

    def locate(self, name: str) -> str:
        """Where adapter ``name``'s files are (a folder, or a hub id vLLM fetches).

        404 for a name that is neither listed nor in the folder.
        """
        source = self.listed.get(name)
        if source is not None:
            if source.kind == "hub":
                return source.location
            try:
                return str(source_path(source))
            except ModelSourceError:
                logger.exception("adapter %s: source %s not found", name, source)
                raise AdapterLoadFailed(f"adapter '{name}' could not be found where the config says", param="model") from None
        adapter = name.rpartition(":")[2]
        if self.folder is None or not name.startswith(f"{self.base}:") or not is_adapter_folder_name(adapter):
            raise ModelNotFound(name)
        folder = Path(self.folder).expanduser()
        # The folder's entries compare case-insensitively, as model names do.
        match = next((p for p in _entries(folder) if p.name.lower() == adapter.lower()), None)
        if match is None or not match.is_dir():
            raise ModelNotFound(name)
        return str(match)

    def check(self, name: str, location: str, modules: frozenset[str] | None = None) -> AdapterInfo | None:
        """The adapter's config checked against the limits (``None`` for a hub adapter, whose
        files vLLM fetches and checks itself)."""
        path = Path(location)
        if not path.is_dir():
            return None
        info = read_adapter_info(path, name)
        check_adapter_info(info, name, self.limits, modules)
        return info


def find_adapter(catalog: AdapterCatalog | None, name: str) -> None:
    """404 (:class:`ModelNotFound`) unless ``catalog`` has adapter ``name``; loads nothing."""
    if catalog is None:
        raise ModelNotFound(name)
    catalog.locate(name)


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


class AdapterCache:
    """The adapters a replica holds: loaded on first use, each once, evicted LRU beyond
    ``capacity``.

    ``load(name)`` and ``unload(name)`` do the engine's part. A load that fails is not kept:
    the next request tries again, and the error goes to every request that waited for it.
    """

    def __init__(
        self,
        capacity: int,
        load: Callable[[str], Awaitable[Any]],
        unload: Callable[[str], Awaitable[None]],
    ) -> None:
        self.capacity = capacity
        self._load = load
        self._unload = unload
        self._held: OrderedDict[str, Any] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self.loads = 0
        self.evictions = 0

    def held(self) -> list[str]:
        """Adapters loaded now, least recently used first."""
        return list(self._held)

    async def get(self, name: str) -> Any:
        """What the engine's ``load`` returned for ``name``, loading it if needed."""
        if name in self._held:
            self._held.move_to_end(name)
            return self._held[name]
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            while len(self._held) >= self.capacity:
                await self.evict(next(iter(self._held)))
            self.loads += 1
            loaded = await self._load(name)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        finally:
            self._loading.pop(name, None)
        self._held[name] = loaded
        future.set_result(loaded)
        return loaded

    async def evict(self, name: str) -> None:
        """Unload ``name`` (a no-op when it is not held)."""
        if name not in self._held:
            return
        del self._held[name]
        self.evictions += 1
        await self._unload(name)
