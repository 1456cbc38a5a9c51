"""Our requests as vLLM's: a :class:`GenerationRequest` rebuilt as vLLM's ``ChatCompletionRequest``
or ``CompletionRequest``, rendered by vLLM's ``OnlineRenderer`` and checked against the context
length (:func:`prepare_chat`, :func:`prepare_completion`); with ``context_fit`` (Ollama) an
over-long prompt is cut to fit instead of refused (rules in ``context_fit``).

Sampling parameters, structured outputs (``response_format`` json_object / json_schema) and logit
bias come from vLLM's own ``to_sampling_params``; the chat template, tools and
``chat_template_kwargs`` (such as ``enable_thinking``) are applied by vLLM's renderer.

vLLM is imported inside the functions only, never at module import.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from deployments.engines.context_fit import fit_messages, fitted_max_tokens, keep_head_and_tail, output_reserve
from deployments.engines.vllm_errors import context_error, translate_vllm_error
from serve_app.core.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    Unsupported,
)
from serve_app.core.internal_types import ChatMessage, GenerationRequest

# -- request preparation ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequestTarget:
    """The started engine a request is prepared for."""

    model_name: str  # the model card's name
    engine: Any  # vllm AsyncLLM
    renderer: Any  # vllm OnlineRenderer
    default_sampling: dict[str, Any]  # the model's generation-config sampling defaults
    override_max_tokens: int | None


@dataclass
class Prepared:
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


def _check_and_sampling(vreq: Any, request: GenerationRequest, prompt_tokens: int, target: RequestTarget, limit: int) -> Any:
    """Check prompt + max_tokens against the limit, then vLLM's SamplingParams.

    With ``context_fit`` (Ollama) only a prompt that leaves no room at all is refused; the output
    is cut where the context is full instead.
    """
    from vllm.entrypoints.serve.utils.api_utils import get_max_tokens

    wanted = request.sampling.max_tokens
    param = "messages" if request.kind == "chat" else "prompt"
    if request.context_fit is not None:
        if prompt_tokens >= limit:
            raise context_error(limit, prompt_tokens, wanted or 0, param)
        wanted = fitted_max_tokens(wanted, prompt_tokens, limit)
    elif prompt_tokens >= limit or prompt_tokens + (wanted or 0) > limit:
        raise context_error(limit, prompt_tokens, wanted or 0, param)
    max_tokens = get_max_tokens(limit, wanted, prompt_tokens, target.default_sampling, target.override_max_tokens)
    try:
        return vreq.to_sampling_params(max_tokens, target.default_sampling)
    except Exception as exc:  # noqa: BLE001 - vLLM validates sampling values here
        raise translate_vllm_error(exc, limit=limit, wanted=wanted or 0, param=param) from exc


def _chat_request(payload: dict[str, Any]) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request for vLLM: {exc.errors()[0].get('msg', exc)}") from exc


def _prompt_ids(engine_input: Any) -> list[int]:
    return list(engine_input.get("prompt_token_ids") or [])


async def _render_chat(renderer: Any, vreq: Any, limit: int, wanted: int) -> Any:
    """The engine input of ``vreq`` rendered with the chat template (vLLM's errors as ours)."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    try:
        rendered = await renderer.render_chat(vreq)
    except Exception as exc:  # noqa: BLE001
        raise translate_vllm_error(exc, limit=limit, wanted=wanted, param="messages") from exc
    if isinstance(rendered, ErrorResponse):
        raise InvalidRequest(rendered.error.message, param=rendered.error.param)
    _conversation, engine_inputs = rendered
    (engine_input,) = engine_inputs
    return engine_input


async def _render_fitted_chat(
    request: GenerationRequest, payload: dict[str, Any], vreq: Any, renderer: Any, limit: int
) -> tuple[Any, Any]:
    """The rendered chat, cut to fit the context by Ollama's rules when the request asks for it.

    Returns the engine input and the vLLM request it was rendered from (with fewer messages
    when some were dropped). Without ``context_fit.truncate`` it is one render, as before.
    """
    fit = request.context_fit
    wanted = request.sampling.max_tokens or 0
    truncating = fit is not None and fit.truncate
    try:
        engine_input = await _render_chat(renderer, vreq, limit, wanted)
    except ContextLengthExceeded:
        if not truncating:
            raise
        engine_input = None
    if not truncating:
        return engine_input, vreq
    assert fit is not None
    if engine_input is not None and len(_prompt_ids(engine_input)) < limit:
        return engine_input, vreq  # it fits: a prompt that fits is never cut
    budget = limit - output_reserve(fit, request.sampling.max_tokens, limit)

    def with_messages(messages: list[ChatMessage]) -> Any:
        return _chat_request({**payload, "messages": [_message_to_vllm(m) for m in messages]})

    async def prompt_tokens(messages: list[ChatMessage]) -> int | None:
        try:
            return len(_prompt_ids(await _render_chat(renderer, with_messages(messages), limit, wanted)))
        except ContextLengthExceeded:
            return None

    vreq = with_messages(await fit_messages(request.messages, prompt_tokens, budget))
    try:
        engine_input = await _render_chat(renderer, vreq, limit, wanted)
        if len(_prompt_ids(engine_input)) <= budget:
            return engine_input, vreq
    except ContextLengthExceeded:
        pass
    # Still too long (one huge message): the first keep_tokens and the end, as Ollama's runner.
    return await _cut_tokens(lambda r: _render_chat(renderer, r, limit, wanted), vreq, budget, fit.keep_tokens), vreq


async def _cut_tokens(render: Callable[[Any], Awaitable[Any]], vreq: Any, budget: int, keep_tokens: int) -> dict[str, Any]:
    """The engine input of ``vreq`` cut to ``budget`` tokens: its first ``keep_tokens``, then its end.

    vLLM's own prompt truncation renders each side (left keeps the end, right the start).
    """
    keep = max(0, min(keep_tokens, budget - 1))
    tail = await render(vreq.model_copy(update={"truncate_prompt_tokens": budget - keep, "truncation_side": "left"}))
    head: list[int] = []
    if keep:
        head = _prompt_ids(await render(vreq.model_copy(update={"truncate_prompt_tokens": keep, "truncation_side": "right"})))
    fitted = {k: v for k, v in dict(tail).items() if k != "prompt"}
    fitted["prompt_token_ids"] = keep_head_and_tail(head + _prompt_ids(tail), budget, keep)
    return fitted


def _chat_payload(request: GenerationRequest, target: RequestTarget) -> dict[str, Any]:
    """The chat request as vLLM's ``ChatCompletionRequest`` payload (messages, sampling, tools,
    response format and chat-template kwargs), refusing what the model cannot take."""
    renderer = target.renderer
    engine = target.engine
    if request.has_images() and not engine.model_config.is_multimodal_model:
        raise Unsupported(f"model '{target.model_name}' does not accept images", param="messages")
    if not request.messages:
        raise InvalidRequest("messages must not be empty", param="messages")
    payload: dict[str, Any] = {
        "model": target.model_name,
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
                f"model '{target.model_name}' cannot call tools: no tool_call_parser is configured for it",
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
    return payload


async def count_chat_tokens(request: GenerationRequest, target: RequestTarget, limit: int) -> int:
    """The chat's prompt length in tokens under the model's chat template, tools included."""
    payload = _chat_payload(request, target)
    engine_input = await _render_chat(target.renderer, _chat_request(payload), limit, 0)
    return len(_prompt_ids(engine_input))


async def prepare_chat(request: GenerationRequest, target: RequestTarget, limit: int) -> Prepared:
    """A chat request rendered with the model's chat template, checked against ``limit``."""
    renderer = target.renderer
    engine = target.engine
    payload = _chat_payload(request, target)
    vreq = _chat_request(payload)
    template_kwargs = renderer.effective_chat_template_kwargs(vreq)
    model_config = engine.model_config
    tokenizer = engine.renderer.tokenizer
    parser_cls = renderer.parser

    def make_parser() -> Any:
        return parser_cls(tokenizer, vreq.tools, chat_template_kwargs=template_kwargs, model_config=model_config)

    first_parser = make_parser() if parser_cls is not None else None
    engine_input, vreq = await _render_fitted_chat(request, payload, vreq, renderer, limit)
    prompt_ids = _prompt_ids(engine_input)
    sampling = _check_and_sampling(vreq, request, len(prompt_ids), target, limit)
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

    return Prepared(
        engine_input=engine_input,
        sampling_params=sampling,
        vllm_request=vreq,
        prompt_tokens=len(prompt_ids),
        parser_factory=parser_factory if parser_cls is not None else None,
        generate_kwargs=generate_kwargs,
        echo_text=None,
    )


async def prepare_completion(request: GenerationRequest, target: RequestTarget, limit: int) -> Prepared:
    """A completion (raw prompt) request rendered and checked against ``limit``."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if request.tools and request.tool_choice != "none":
        raise Unsupported("tools need a chat request", param="tools")
    renderer = target.renderer
    engine = target.engine
    prompt = request.prompt if request.prompt is not None else ""
    payload: dict[str, Any] = {"model": target.model_name, "prompt": prompt, "max_tokens": None, **_sampling_fields(request)}
    if request.suffix:
        payload["suffix"] = request.suffix
    if request.echo:
        payload["echo"] = True
    if request.sampling.logprobs:
        payload["logprobs"] = request.sampling.top_logprobs or 0
    response_format = _response_format_to_vllm(request)
    if response_format is not None:
        payload["response_format"] = response_format
    wanted = request.sampling.max_tokens or 0
    try:
        vreq = CompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request for vLLM: {exc.errors()[0].get('msg', exc)}") from exc

    async def render(completion: Any) -> Any:
        try:
            rendered = await renderer.render_completion(completion)
        except Exception as exc:  # noqa: BLE001
            raise translate_vllm_error(exc, limit=limit, wanted=wanted, param="prompt") from exc
        if isinstance(rendered, ErrorResponse):
            err = Unsupported if rendered.error.param == "suffix" else InvalidRequest
            raise err(rendered.error.message, param=rendered.error.param)
        if len(rendered) != 1:
            raise InvalidRequest("exactly one prompt per request", param="prompt")
        return rendered[0]

    fit = request.context_fit
    budget = limit if fit is None else limit - output_reserve(fit, request.sampling.max_tokens, limit)
    try:
        engine_input = await render(vreq)
    except ContextLengthExceeded:
        if fit is None or not fit.truncate:
            raise
        engine_input = None
    if fit is not None and fit.truncate and (engine_input is None or len(_prompt_ids(engine_input)) >= limit):
        # A raw prompt has no messages to drop: Ollama's runner keeps its start and its end.
        engine_input = await _cut_tokens(render, vreq, budget, fit.keep_tokens)
    prompt_ids = _prompt_ids(engine_input)
    sampling = _check_and_sampling(vreq, request, len(prompt_ids), target, limit)
    echo_text = None
    if request.echo:
        echo_text = prompt if isinstance(prompt, str) else engine.renderer.tokenizer.decode(prompt_ids)
    return Prepared(
        engine_input=engine_input,
        sampling_params=sampling,
        vllm_request=vreq,
        prompt_tokens=len(prompt_ids),
        parser_factory=None,
        generate_kwargs={},
        echo_text=echo_text,
    )
