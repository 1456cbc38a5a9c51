"""The typed ``args:`` of ``config.yaml``: validated before anything starts.

Every model is `extra="forbid"`, so a misspelt key fails loudly with the path of the bad field.
Engine arguments are validated by the engine's own config model (see
``deployments.engines.registry``) at build time too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deployments.engines.adapters import AdapterCatalog, LoraLimits
from deployments.model_facts import ModelFacts, describe_source
from deployments.model_sources import ModelSource
from serve_app.core.internal_types import ModelCard
from serve_app.core.model_names import ModelResolver


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingOptions(_Strict):
    """Ray Serve's ``autoscaling_config`` fields we expose (see Serve's docs for each)."""

    min_replicas: int = Field(default=1, ge=0)
    initial_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=16, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    upscaling_factor: float | None = Field(default=None, gt=0)
    downscaling_factor: float | None = Field(default=None, gt=0)
    metrics_interval_s: float | None = Field(default=None, gt=0)
    look_back_period_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ActorOptions(_Strict):
    """Where a replica runs: CPUs (fractions allowed), GPUs, custom resources, accelerator."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory: int | None = Field(default=None, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    accelerator_type: str | None = None


class DeploymentOptions(_Strict):
    """Ray Serve deployment options for one deployment."""

    num_replicas: int | None = Field(default=None, ge=1)
    autoscaling_config: AutoscalingOptions | None = None
    max_ongoing_requests: int = Field(default=64, ge=1)
    max_queued_requests: int = Field(default=-1, ge=-1)
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    graceful_shutdown_timeout_s: float = Field(default=600.0, ge=0)
    graceful_shutdown_wait_loop_s: float | None = Field(default=None, ge=0)
    health_check_period_s: float = Field(default=10.0, gt=0)
    health_check_timeout_s: float = Field(default=30.0, gt=0)
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    max_constructor_retry_count: int | None = Field(
        default=None,
        ge=0,
        description="How often Serve retries a failing replica constructor before the deployment "
        "is DEPLOY_FAILED (Serve's default: 20); the model then shows as failed.",
    )

    @model_validator(mode="after")
    def _replicas_xor_autoscaling(self) -> DeploymentOptions:
        if self.num_replicas is not None and self.autoscaling_config is not None:
            raise ValueError("give either num_replicas or autoscaling_config, not both")
        return self

    def serve_options(self, retry_after_s: float) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        options = self.model_dump(exclude_none=True, exclude={"ray_actor_options", "autoscaling_config"})
        actor = self.ray_actor_options.model_dump(exclude_none=True)
        if not actor["resources"]:
            del actor["resources"]
        options["ray_actor_options"] = actor
        if self.autoscaling_config is not None:
            options["autoscaling_config"] = self.autoscaling_config.model_dump(exclude_none=True)
        elif self.num_replicas is None:
            options["num_replicas"] = 1
        # Serve's own rejection (caught and re-rendered by the ingress) says 429 + Retry-After.
        options["backpressure_config"] = {"status_code": 429, "retry_after_s": retry_after_s}
        return options


RoutingPolicy = Literal["cache_aware", "serve_default", "ray_prefix_affinity"]
_POLICY_SETTINGS: dict[str, set[str]] = {
    "cache_aware": {"block_chars", "chars_per_token", "load_weight_tokens", "max_load_ratio",
                    "load_slack_requests", "default_capacity_tokens"},
    "ray_prefix_affinity": {
        "imbalanced_threshold", "match_rate_threshold", "do_eviction", "eviction_threshold_chars",
        "eviction_target_chars", "eviction_interval_secs",
    },
    "serve_default": set(),
}


class RoutingConfig(_Strict):
    """How requests pick one of a model's replicas (used when it can have two or more).

    ``cache_aware`` (default): prefix affinity and load scored together
    (``deployments.prefix_index``); ``ray_prefix_affinity``: Ray's own
    ``PrefixCacheAffinityRouter``; ``serve_default``: Serve's power of two choices. The settings
    beside ``policy`` belong to it; one meant for another policy is refused.
    """

    policy: RoutingPolicy = "cache_aware"
    stats_period_s: float = Field(
        default=2.0, gt=0, description="How often replicas report KV capacity and prefix-cache counters."
    )
    # cache_aware
    block_chars: int | None = Field(default=None, ge=8, description="Characters per prefix block (~16 tokens).")
    chars_per_token: float | None = Field(default=None, gt=0)
    load_weight_tokens: float | None = Field(
        default=None, ge=0, description="Uncached prompt tokens one in-flight request weighs as."
    )
    max_load_ratio: float | None = Field(
        default=None, ge=1, description="Busiest replica's in-flight requests over the average, at most."
    )
    load_slack_requests: int | None = Field(
        default=None, ge=1, description="In-flight requests above the least loaded replica always allowed."
    )
    default_capacity_tokens: int | None = Field(
        default=None, ge=1, description="KV capacity assumed for a replica that has not reported its own."
    )
    # ray_prefix_affinity (Ray's own names and meanings)
    imbalanced_threshold: float | None = Field(default=None, ge=0)
    match_rate_threshold: float | None = Field(default=None, ge=0, le=1)
    do_eviction: bool | None = None
    eviction_threshold_chars: int | None = Field(default=None, ge=1)
    eviction_target_chars: int | None = Field(default=None, ge=1)
    eviction_interval_secs: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_policy(cls, value: Any) -> Any:
        return {"policy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _settings_of_policy(self) -> RoutingConfig:
        given = {name for name in self.model_fields_set if name not in ("policy", "stats_period_s")}
        foreign = sorted(given - _POLICY_SETTINGS[self.policy])
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do not apply to routing policy '{self.policy}'")
        return self

    def router_kwargs(self) -> dict[str, Any]:
        """The policy's settings as its router's ``initialize_state`` keywords."""
        return self.model_dump(include=_POLICY_SETTINGS[self.policy], exclude_none=True)

    def serve_option(self) -> dict[str, Any]:
        """Serve's ``request_router_config`` for this policy."""
        from deployments.request_routers import (  # imports Ray
            CACHE_AWARE_ROUTER,
            RAY_PREFIX_ROUTER,
            SERVE_DEFAULT_ROUTER,
        )

        router = {
            "cache_aware": CACHE_AWARE_ROUTER,
            "ray_prefix_affinity": RAY_PREFIX_ROUTER,
            "serve_default": SERVE_DEFAULT_ROUTER,
        }[self.policy]
        return {
            "request_router_class": router,
            "request_router_kwargs": self.router_kwargs(),
            "request_routing_stats_period_s": self.stats_period_s,
        }


class ScaleToZeroConfig(_Strict):
    """A model with ``autoscaling_config.min_replicas: 0``: loaded on demand, unloaded when idle.

    As Ollama does it: each request's ``keep_alive`` (Ollama API; the default for others) sets how
    long the model stays loaded once idle, within ``max_keep_alive_s``. Requests that arrive while
    it loads wait at the ingress, at most ``load_queue_limit`` of them and ``load_timeout_s`` each;
    past either they are answered 503 with ``Retry-After``.
    """

    keep_alive_s: float = Field(default=300.0, ge=0, description="Idle seconds before unloading (Ollama: 5m).")
    max_keep_alive_s: float | None = Field(
        default=3600.0, ge=0, description="The longest keep_alive a request gets; null lets a negative one keep it loaded."
    )
    load_timeout_s: float = Field(default=600.0, gt=0)
    load_queue_limit: int = Field(default=64, ge=1)

    def keep_alive(self) -> dict[str, Any]:
        """The replica's ``KeepAlive`` arguments."""
        return {"default_s": self.keep_alive_s, "max_s": self.max_keep_alive_s}


KEEP_ALIVE_POLICY = "deployments.keep_alive_policy:keep_alive_policy"
DEFAULT_CONTEXT_LENGTH = 2048


class AdapterConfig(_Strict):
    """A LoRA adapter of a generate model: a model of its own to clients, served by the base's
    replicas with the adapter applied."""

    name: str = Field(min_length=1, description="Its model name, e.g. smollm2-pirate:135m.")
    aliases: list[str] = Field(default_factory=list)
    source: ModelSource = Field(description="A PEFT adapter folder: local:, package: or hub: as for models.")
    capabilities: list[str] | None = Field(default=None, description="Default: the base model's.")


class ModelConfig(_Strict):
    """One served model: its names, what it can do, its engine and its deployment."""

    name: str = Field(min_length=1, description="Canonical, Ollama-style name, e.g. smollm2:135m.")
    aliases: list[str] = Field(default_factory=list)
    kind: Literal["generate", "embed"] = "generate"
    engine: Literal["fake", "vllm"] = "vllm"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    context_length: int | None = Field(
        default=None,
        ge=1,
        description="Tokens of prompt + output; default: the length the model was trained for, "
        "read from its own files (config.json or GGUF metadata), else 2048. A vLLM model without "
        "engine_args.max_model_len is served at exactly this length.",
    )
    embedding_dimensions: int | None = Field(default=None, ge=1)
    supports_dimensions: bool = False
    capabilities: list[str] | None = None
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "safetensors"
    deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    scale_to_zero: ScaleToZeroConfig = Field(default_factory=ScaleToZeroConfig)
    adapters: list[AdapterConfig] = Field(default_factory=list)
    adapter_folder: str | None = Field(
        default=None,
        description="A folder of PEFT adapter folders (a volume in k8s): '<name>:<folder>' serves "
        "the adapter in '<folder>' without listing it, loaded on first use.",
    )
    lora: LoraLimits = Field(default_factory=LoraLimits)

    @model_validator(mode="after")
    def _scale_to_zero_needs_min_zero(self) -> ModelConfig:
        if "scale_to_zero" in self.model_fields_set and not self.on_demand:
            raise ValueError("scale_to_zero applies to a model with deployment.autoscaling_config.min_replicas: 0")
        return self

    @model_validator(mode="after")
    def _adapters_of_generate_models(self) -> ModelConfig:
        if self.kind != "generate" and self.serves_adapters:
            raise ValueError("adapters and adapter_folder apply to generate models")
        if "lora" in self.model_fields_set and not self.serves_adapters:
            raise ValueError("lora limits apply to a model with adapters or an adapter_folder")
        return self

    @property
    def serves_adapters(self) -> bool:
        """It serves LoRA adapters (listed, or from its folder)."""
        return bool(self.adapters) or self.adapter_folder is not None

    def adapter_catalog(self) -> AdapterCatalog | None:
        """What its replicas need to find and check its adapters; ``None`` without adapters."""
        if not self.serves_adapters:
            return None
        return AdapterCatalog(
            base=self.name, limits=self.lora, listed={a.name: a.source for a in self.adapters}, folder=self.adapter_folder
        )

    def adapter_cards(self, base: ModelCard) -> list[ModelCard]:
        """A card per listed adapter: the base's, renamed, with its own aliases and capabilities."""
        return [
            base.model_copy(
                update={
                    "name": adapter.name,
                    "aliases": adapter.aliases,
                    "capabilities": adapter.capabilities if adapter.capabilities is not None else base.capabilities,
                    "base_model": base.name,
                    "loads_unlisted_adapters": False,
                    "digest": None,
                    "size_bytes": 0,
                    "size_vram_bytes": 0,
                }
            )
            for adapter in self.adapters
        ]

    @property
    def on_demand(self) -> bool:
        """It scales to zero: loaded by its first request, unloaded when idle."""
        scaling = self.deployment.autoscaling_config
        return scaling is not None and scaling.min_replicas == 0

    def max_replicas(self) -> int:
        """The most replicas this model's deployment can have."""
        options = self.deployment
        if options.autoscaling_config is not None:
            return options.autoscaling_config.max_replicas
        return options.num_replicas or 1

    def serve_options(self, retry_after_s: float) -> dict[str, Any]:
        """``Deployment.options`` for this model: its deployment's, and its router when it can
        have two or more replicas (one replica has nothing to choose)."""
        options = self.deployment.serve_options(retry_after_s)
        if self.kind == "generate" and self.max_replicas() >= 2:
            options["request_router_config"] = self.routing.serve_option()
        if self.on_demand:
            scaling = options["autoscaling_config"]
            # Our policy holds the last replica until its keep-alive ends, then lets it go at once;
            # replicas report that deadline every second, over a short window.
            scaling["policy"] = {"policy_function": KEEP_ALIVE_POLICY}
            scaling["downscale_to_zero_delay_s"] = 0.0
            scaling.setdefault("metrics_interval_s", 1.0)
            scaling.setdefault("look_back_period_s", 2.0)
        return options

    def source(self) -> ModelSource | None:
        """The model's weights, when its engine loads any (``engine_args.source``)."""
        raw = self.engine_args.get("source")
        return None if raw is None else ModelSource.model_validate(raw)

    def facts(self) -> ModelFacts | None:
        """What the model's own files say (context length, size, digest), read from its source."""
        source = self.source()
        if source is None:
            return None
        return describe_source(source, self.engine_args.get("model_cache_dir"))

    def card(self, facts: ModelFacts | None = None) -> ModelCard:
        """The model card both APIs show; ``facts`` fill what the config leaves out."""
        default_caps = ["completion"] if self.kind == "generate" else ["embedding"]
        context = (
            self.context_length
            or self.engine_args.get("max_model_len")
            or (facts.context_length if facts else None)
            or DEFAULT_CONTEXT_LENGTH
        )
        size = facts.size_bytes if facts else 0
        on_accelerator = self.deployment.ray_actor_options.num_gpus > 0
        return ModelCard(
            name=self.name,
            aliases=self.aliases,
            kind=self.kind,
            context_length=context,
            size_bytes=size,
            size_vram_bytes=size if on_accelerator else 0,
            digest=facts.digest if facts else None,
            embedding_dimensions=self.embedding_dimensions,
            supports_dimensions=self.supports_dimensions,
            capabilities=self.capabilities if self.capabilities is not None else default_caps,
            family=self.family,
            parameter_size=self.parameter_size,
            quantization_level=self.quantization_level,
            format=self.format,
            loads_unlisted_adapters=self.adapter_folder is not None,
        )

    def engine_args_for(self, card: ModelCard) -> dict[str, Any]:
        """``engine_args`` with vLLM's ``max_model_len`` set to the card's context length.

        So vLLM allocates, enforces and reports the same length the APIs show.
        """
        args = dict(self.engine_args)
        if self.engine == "vllm" and self.kind == "generate" and args.get("max_model_len") is None:
            args["max_model_len"] = card.context_length
        return args


class IngressConfig(_Strict):
    """The ingress deployment: HTTP settings (secrets come from LLM_* env vars) and placement."""

    settings: dict[str, Any] = Field(default_factory=dict, description="IngressSettings fields.")
    deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            max_ongoing_requests=2048, ray_actor_options=ActorOptions(num_cpus=0.25)
        )
    )

    def may_run_several(self) -> bool:
        """Whether Serve may run more than one ingress replica (fixed or autoscaled)."""
        scaling = self.deployment.autoscaling_config
        return (self.deployment.num_replicas or 1) > 1 or (scaling is not None and scaling.max_replicas > 1)

    @model_validator(mode="after")
    def _one_replica_per_sqlite_file(self) -> IngressConfig:
        state = self.settings.get("state") or {}
        shared = isinstance(state, dict) and state.get("database_url_env")
        if self.may_run_several() and not shared:
            raise ValueError(
                "several ingress replicas (num_replicas > 1 or autoscaling) need a shared database: "
                "the default SQLite file is one replica's own; set settings.state.database_url_env "
                "to the environment variable holding a postgresql:// URL"
            )
        return self


class StreamingConfig(_Strict):
    """How streamed chunks cross the ingress <- replica handle hop."""

    group_interval_s: float = Field(
        default=0.01,
        ge=0,
        description="Chunks arriving within this interval of the last send are sent together; "
        "the first chunk and any chunk after a quiet gap go at once.",
    )


class AppConfig(_Strict):
    """``args:`` of ``deployments.app:build_app``."""

    models: list[ModelConfig] = Field(min_length=1)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    streaming: StreamingConfig = Field(default_factory=StreamingConfig)
    retry_after_s: float = Field(default=1.0, gt=0, description="Retry-After sent with 429/503.")

    def cards(self) -> dict[str, ModelCard]:
        """Every model's card, with what its own files say (context length, size, digest), and
        after each base model its listed adapters' cards."""
        cards: dict[str, ModelCard] = {}
        for model in self.models:
            base = cards[model.name] = model.card(model.facts())
            cards.update((card.name, card) for card in model.adapter_cards(base))
        return cards

    @model_validator(mode="after")
    def _names_unique(self) -> AppConfig:
        cards = [card for m in self.models for base in (m.card(),) for card in (base, *m.adapter_cards(base))]
        names = [card.name for card in cards]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"model names claimed by both a model and an adapter, or twice: {', '.join(twice)}")
        ModelResolver(cards)  # raises on a spelling (alias, case, :latest) claimed twice
        return self


class ConfigError(ValueError):
    """A config that cannot be served, with every bad field named."""


def parse_app_config(args: dict[str, Any]) -> AppConfig:
    """Validate ``args``; raise :class:`ConfigError` naming each bad field."""
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "args"
            problems.append(f"  - {where}: {err['msg']}")
        raise ConfigError("invalid application config (config.yaml args):\n" + "\n".join(problems)) from None
