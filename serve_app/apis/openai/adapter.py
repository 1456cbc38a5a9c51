"""Pure translation between OpenAI wire objects and the internal types."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
from typing import Any

from serve_app.apis.openai import schemas as wire
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    ChoiceResult,
    ContentPart,
    EmbeddingResult,
    FunctionCall,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    ModelStatus,
    ResponseFormat,
    SamplingParams,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolSpec,
    Usage,
    new_request_id,
)
from serve_app.core.request_limits import RequestLimits
from serve_app.core.version import SERVER_VERSION

_DATA_URL = re.compile(r"^data:(?P<media>image/[\w.+\-]+);base64,(?P<data>.*)$", re.DOTALL)


def set_fields(body: Any, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` the client actually set (to report as not honoured)."""
    return [name for name in names if name in body.model_fields_set and getattr(body, name) is not None]


def image_from_url(url: str, param: str) -> ImagePart:
    """An inline image from a base64 ``data:`` URL; remote URLs are refused, not fetched."""
    match = _DATA_URL.match(url)
    if match is None:
        raise Unsupported(
            "Only base64 data URLs (data:image/...;base64,...) are supported for images.", param=param
        )
    data = match.group("data")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"The image data is not valid base64: {exc}", param=param) from exc
    return ImagePart(media_type=match.group("media"), data_base64=data)


def _content(content: Any, param: str) -> str | list[ContentPart] | None:
    if content is None or isinstance(content, str):
        return content
    parts: list[ContentPart] = []
    for j, part in enumerate(content):
        if isinstance(part, wire.TextContentPart):
            parts.append(TextPart(text=part.text))
        elif isinstance(part, wire.ImageContentPart):
            parts.append(image_from_url(part.image_url.url, f"{param}[{j}].image_url.url"))
        elif isinstance(part, wire.RefusalContentPart):
            parts.append(TextPart(text=part.refusal))
    return parts


def message_to_internal(message: Any, index: int) -> ChatMessage:
    """One OpenAI message as an internal :class:`ChatMessage`."""
    param = f"messages[{index}].content"
    if isinstance(message, wire.AssistantMessage):
        calls = [
            ToolCall(id=c.id, function=FunctionCall(name=c.function.name, arguments=c.function.arguments))
            for c in message.tool_calls or []
        ]
        return ChatMessage(
            role="assistant",
            content=_content(message.content, param),
            name=message.name,
            tool_calls=calls or None,
            reasoning=message.reasoning_content,
        )
    if isinstance(message, wire.ToolMessage):
        return ChatMessage(role="tool", content=_content(message.content, param), tool_call_id=message.tool_call_id)
    return ChatMessage(role=message.role, content=_content(message.content, param), name=message.name)


def _stop(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    try:
        return {int(token): value for token, value in bias.items()}
    except ValueError as exc:
        raise InvalidRequest("logit_bias keys must be token ids", param="logit_bias") from exc


def _sampling(body: wire._SamplingFields, max_tokens: int | None, n: int) -> dict[str, Any]:
    return {
        "max_tokens": max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "seed": body.seed,
        "stop": _stop(body.stop),
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        "logit_bias": _logit_bias(body.logit_bias),
        "ignore_eos": bool(body.ignore_eos),
        "n": n,
    }


def chat_request_to_internal(
    body: wire.ChatCompletionRequest, model: str, request_id: str
) -> tuple[GenerationRequest, list[str]]:
    """An internal chat request, plus the names of accepted fields we cannot honour."""
    fmt = ResponseFormat()
    if isinstance(body.response_format, wire.ResponseFormatJsonObject):
        fmt = ResponseFormat(type="json_object")
    elif isinstance(body.response_format, wire.ResponseFormatJsonSchema):
        schema = body.response_format.json_schema.schema_ or {"type": "object"}
        fmt = ResponseFormat(type="json_schema", json_schema=schema)
    tool_choice = body.tool_choice or "auto"
    if isinstance(tool_choice, wire.NamedToolChoice):
        tool_choice = tool_choice.function.name
    tools = [
        ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
        for t in body.tools or []
    ]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    request = GenerationRequest(
        request_id=request_id,
        model=model,
        kind="chat",
        messages=[message_to_internal(m, i) for i, m in enumerate(body.messages)],
        sampling=SamplingParams(
            **_sampling(body, body.max_completion_tokens or body.max_tokens, body.n or 1),
            logprobs=bool(body.logprobs),
            top_logprobs=body.top_logprobs,
        ),
        response_format=fmt,
        tools=tools or None,
        tool_choice=tool_choice,
        include_usage=include_usage or not body.stream,
        user=body.user,
    )
    return request, set_fields(body, wire.UNHONOURED_CHAT_FIELDS)


def completion_requests_to_internal(
    body: wire.CompletionRequest, model: str, request_id: str, limits: RequestLimits
) -> tuple[list[GenerationRequest], list[str]]:
    """One internal request per prompt (OpenAI allows a batch of prompts, up to the limit)."""
    prompt = body.prompt
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [list(prompt)]  # type: ignore[arg-type]
    else:
        prompts = list(prompt)  # type: ignore[arg-type]
    if body.echo and any(isinstance(p, list) for p in prompts):
        raise Unsupported("'echo' is not supported with token-id prompts", param="echo")
    limits.check_prompt_batch(len(prompts))
    n = body.n or 1
    unhonoured = set_fields(body, wire.UNHONOURED_COMPLETION_FIELDS)
    if body.best_of in (None, 1) and "best_of" in unhonoured:
        unhonoured.remove("best_of")
    requests = [
        GenerationRequest(
            request_id=request_id if i == 0 else f"{request_id}-{i}",
            model=model,
            kind="completion",
            prompt=p,
            suffix=body.suffix,
            echo=bool(body.echo),
            sampling=SamplingParams(
                **_sampling(body, body.max_tokens, n),
                logprobs=body.logprobs is not None,
                top_logprobs=body.logprobs,
            ),
            user=body.user,
        )
        for i, p in enumerate(prompts)
    ]
    return requests, unhonoured


# -- responses ------------------------------------------------------------------------------


def _token_logprob(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top_logprobs],
    }


def _tool_calls(calls: list[Any], streaming: bool) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        item: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if streaming:
            item["index"] = call.index
        out.append(item)
    return out


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object, with the prompt tokens the engine's prefix cache held."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


class ChatChunkAdapter:
    """Turns internal chunks into ``chat.completion.chunk`` objects for one stream.

    Holds the stream's id and which choices already sent their ``role``; totals usage for the
    closing usage chunk.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{new_request_id()}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._roles_sent: set[int] = set()
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens = 0

    def chunk(self, chunk: GenerationChunk) -> dict[str, Any]:
        """One chunk object for one internal chunk."""
        delta: dict[str, Any] = {}
        if chunk.index not in self._roles_sent:
            self._roles_sent.add(chunk.index)
            delta["role"] = "assistant"
            delta["content"] = chunk.text
        elif chunk.text:
            delta["content"] = chunk.text
        if chunk.reasoning:
            delta["reasoning_content"] = chunk.reasoning
        if chunk.tool_calls:
            delta["tool_calls"] = _tool_calls(chunk.tool_calls, streaming=True)
        if chunk.usage is not None:
            self._prompt_tokens = max(self._prompt_tokens, chunk.usage.prompt_tokens)
            self._cached_tokens = max(self._cached_tokens, chunk.usage.cached_tokens)
            self._completion_tokens += chunk.usage.completion_tokens
        choice: dict[str, Any] = {
            "index": chunk.index,
            "delta": delta,
            "logprobs": _chat_logprobs(chunk.logprobs),
            "finish_reason": chunk.finish_reason,
        }
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(self.model),
            "choices": [choice],
        }
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self) -> dict[str, Any]:
        """The extra chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(self.model),
            "choices": [],
            "usage": usage_dict(Usage(self._prompt_tokens, self._completion_tokens, self._cached_tokens)),
        }


def system_fingerprint(model: str) -> str:
    """A stable fingerprint of the serving configuration (OpenAI's document says string, never
    null): this server's version and the model, so clients can tell when either changed."""
    digest = hashlib.sha256(f"{SERVER_VERSION}:{model}".encode()).hexdigest()
    return f"fp_{digest[:10]}"


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: ``content`` and ``refusal`` (required by the document)."""
    if not logprobs:
        return None
    return {"content": [_token_logprob(lp) for lp in logprobs], "refusal": None}


def _chat_choice(choice: ChoiceResult) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text, "refusal": None}
    if choice.tool_calls:
        message["tool_calls"] = _tool_calls(choice.tool_calls, streaming=False)
        message["content"] = choice.text or None
    if choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    return {
        "index": choice.index,
        "message": message,
        "logprobs": _chat_logprobs(choice.logprobs),
        "finish_reason": choice.finish_reason,
    }


def chat_completion_body(result: GenerationResult, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object for a folded result."""
    return {
        "id": f"chatcmpl-{new_request_id()}",
        "object": "chat.completion",
        "created": result.created,
        "model": model,
        "system_fingerprint": system_fingerprint(model),
        "choices": [_chat_choice(c) for c in result.choices],
        "usage": usage_dict(result.usage),
    }


def _completion_logprobs(logprobs: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs} for lp in logprobs],
        "text_offset": offsets,
    }


class CompletionChunkAdapter:
    """Turns internal chunks into streamed ``text_completion`` objects for one stream."""

    def __init__(self, model: str, include_usage: bool, echo_prompts: dict[int, str]) -> None:
        self.id = f"cmpl-{new_request_id()}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage
        self._echo = dict(echo_prompts)  # choice index -> prompt text still to echo
        self._offsets: dict[int, int] = {}
        self._prompt_tokens: dict[int, int] = {}
        self._completion_tokens = 0

    def chunk(self, chunk: GenerationChunk, prompt_group: int = 0) -> dict[str, Any]:
        """One streamed completion object for one internal chunk."""
        echo = self._echo.pop(chunk.index, "")
        text = echo + chunk.text
        # Offsets of generated tokens count the echoed prompt before them.
        offset = self._offsets.get(chunk.index, 0) + len(echo)
        self._offsets[chunk.index] = offset + len(chunk.text)
        if chunk.usage is not None:
            self._prompt_tokens[prompt_group] = chunk.usage.prompt_tokens
            self._completion_tokens += chunk.usage.completion_tokens
        body: dict[str, Any] = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(self.model),
            "choices": [
                {
                    "index": chunk.index,
                    "text": text,
                    "logprobs": _completion_logprobs(chunk.logprobs, offset) if chunk.logprobs else None,
                    "finish_reason": chunk.finish_reason,
                }
            ],
        }
        # No "usage": null here (unlike chat chunks): the completion object's usage is not
        # nullable in OpenAI's document; the usage chunk carries it.
        return body

    def usage_chunk(self) -> dict[str, Any]:
        """The closing usage chunk (prompts of every group counted once each)."""
        usage = Usage(sum(self._prompt_tokens.values()), self._completion_tokens)
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": system_fingerprint(self.model),
            "choices": [],
            "usage": usage_dict(usage),
        }


def completion_body(
    results: list[GenerationResult], model: str, echo_prompts: list[str | None], n: int
) -> dict[str, Any]:
    """A ``text_completion`` object for one folded result per prompt."""
    choices = []
    prompt_tokens = completion_tokens = cached_tokens = 0
    for group, result in enumerate(results):
        prompt_tokens += result.usage.prompt_tokens
        completion_tokens += result.usage.completion_tokens
        cached_tokens += result.usage.cached_tokens
        echo = echo_prompts[group] or ""
        for choice in result.choices:
            choices.append(
                {
                    "index": group * n + choice.index,
                    "text": echo + choice.text,
                    "logprobs": _completion_logprobs(choice.logprobs, len(echo)) if choice.logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
            )
    return {
        "id": f"cmpl-{new_request_id()}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": system_fingerprint(model),
        "choices": choices,
        "usage": usage_dict(Usage(prompt_tokens, completion_tokens, cached_tokens)),
    }


def embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """OpenAI's ``input`` (string, strings, token ids, lists of token ids) as a list."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [list(value)]
    return list(value)


def _encode_vector(vector: list[float], encoding_format: str | None) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embeddings_body(result: EmbeddingResult, model: str, encoding_format: str | None) -> dict[str, Any]:
    """OpenAI's embeddings list (base64 is little-endian float32, as the SDK decodes it)."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, encoding_format)}
            for i, v in enumerate(result.vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


def model_object(status: ModelStatus) -> dict[str, Any]:
    """A ``model`` object, with our ``state`` extension."""
    return {
        "id": status.card.name,
        "object": "model",
        "created": status.card.created,
        "owned_by": status.card.owned_by,
        "state": status.state,
        "root": status.card.base_model or status.card.name,
        "parent": status.card.base_model,
    }
