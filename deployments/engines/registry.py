"""Engine kinds by name: their config models (validated at build time) and constructors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from deployments.engines.adapters import AdapterCatalog
from deployments.engines.base import Engine
from serve_app.core.internal_types import ModelCard


def engine_config_model(kind: str, model_kind: str) -> type[BaseModel]:
    """The pydantic model that validates ``engine_args`` for an engine kind."""
    if kind == "fake":
        from deployments.engines.fake import FakeEngineConfig

        return FakeEngineConfig
    if kind == "vllm":
        # Importing the module does not import vllm (it is imported when the engine starts).
        from deployments.engines.vllm_engine import VLLMEngineConfig

        return VLLMEngineConfig
    raise ValueError(f"unknown engine kind {kind!r}")


def validate_engine_args(kind: str, model_kind: str, args: dict[str, Any]) -> BaseModel:
    """Validated engine config (raises pydantic's ValidationError naming the bad field)."""
    return engine_config_model(kind, model_kind).model_validate(args)


def engine_lora_modules(kind: str, args: dict[str, Any]) -> frozenset[str] | None:
    """The base model's module names an adapter may target, where known before it starts (the
    fake engine's; vLLM checks an adapter's modules against the model when it loads it)."""
    if kind != "fake":
        return None
    from deployments.engines.fake import FakeEngineConfig

    return frozenset(FakeEngineConfig.model_validate(args).lora_modules)


def build_engine(kind: str, card: ModelCard, args: dict[str, Any], adapters: AdapterCatalog | None = None) -> Engine:
    """A not-yet-started engine for ``card`` (serving ``adapters`` of it when given)."""
    config = validate_engine_args(kind, card.kind, args)
    if kind == "fake":
        from deployments.engines.fake import FakeEngine

        return FakeEngine(card, config, adapters)  # type: ignore[arg-type]
    from deployments.engines import vllm_engine

    if card.kind == "embed":
        return vllm_engine.VLLMEmbeddingEngine(card, config)  # type: ignore[arg-type]
    return vllm_engine.VLLMEngine(card, config, adapters)  # type: ignore[arg-type]
