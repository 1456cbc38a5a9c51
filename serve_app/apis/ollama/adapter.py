"""Pure translation between Ollama wire objects and the internal types."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from serve_app.apis.ollama import schemas as wire
from serve_app.core.errors import InvalidRequest
from serve_app.core.internal_types import (
    ChatMessage,
    ContentPart,
    ContextFit,
    FunctionCall,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    ModelCard,
    ModelStatus,
    ResponseFormat,
    SamplingParams,
    TextPart,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)

_IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def rfc3339_nano(ns: int | None = None) -> str:
    """Go's RFC 3339 timestamp with nanoseconds, in UTC (Ollama's ``created_at``)."""
    ns = time.time_ns() if ns is None else ns
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def image_part(data: str, param: str) -> ImagePart:
    """An Ollama image (bare base64) as an internal image, its type sniffed from its bytes."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"invalid image data in '{param}': not base64", param=param) from exc
    media = next((m for magic, m in _IMAGE_MAGIC if raw.startswith(magic)), "image/png")
    return ImagePart(media_type=media, data_base64=data)


def _content(text: str | None, images: list[str] | None, param: str) -> str | list[ContentPart]:
    if not images:
        return text or ""
    parts: list[ContentPart] = [image_part(img, f"{param}.images[{i}]") for i, img in enumerate(images)]
    parts.append(TextPart(text=text or ""))
    return parts


def options_to_sampling(options: wire.Options | None) -> tuple[SamplingParams, int | None, list[str]]:
    """Ollama options as sampling parameters, the ``num_ctx`` cap, and the options not honoured."""
    if options is None:
        return SamplingParams(), None, []
    # ``model_fields_set`` holds the extra (unknown) options too; a set names each once.
    given = {k for k in options.model_fields_set if getattr(options, k, None) is not None}
    given |= set(options.model_extra or {})
    unhonoured = sorted(f"options.{k}" for k in given if k not in wire.HONOURED_OPTIONS)
    max_tokens = options.num_predict
    if max_tokens is not None:
        if max_tokens == 0 or max_tokens < -2:
            raise InvalidRequest("options.num_predict must be positive, or -1 (no limit) or -2 (fill the context)", param="options.num_predict")
        if max_tokens < 0:
            max_tokens = None  # -1 and -2 both mean: until the context is full
    stop = [options.stop] if isinstance(options.stop, str) else list(options.stop or [])
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        seed=options.seed,
        stop=stop,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repetition_penalty=options.repeat_penalty,
    )
    return sampling, options.num_ctx, unhonoured


def format_to_internal(fmt: wire.Format) -> ResponseFormat:
    """``"json"`` or a JSON schema as structured-output constraints."""
    if fmt == "json":
        return ResponseFormat(type="json_object")
    if isinstance(fmt, dict):
        return ResponseFormat(type="json_schema", json_schema=fmt)
    return ResponseFormat()


# Ollama's num_keep default (api.DefaultOptions); -1 keeps the whole start.
DEFAULT_NUM_KEEP = 4
KEEP_ALL_TOKENS = 1 << 30


def context_fit(body: wire._GenerationFields) -> ContextFit:
    """Ollama's rules for prompts and outputs longer than the context (absent flags mean true)."""
    num_keep = body.options.num_keep if body.options is not None else None
    if num_keep is None:
        num_keep = DEFAULT_NUM_KEEP
    return ContextFit(
        truncate=body.truncate is not False,
        shift=body.shift is not False,
        keep_tokens=KEEP_ALL_TOKENS if num_keep < 0 else num_keep,
    )


def _common(body: wire._GenerationFields) -> tuple[dict[str, Any], list[str]]:
    sampling, num_ctx, unhonoured = options_to_sampling(body.options)
    sampling.logprobs = bool(body.logprobs)
    sampling.top_logprobs = body.top_logprobs if body.logprobs else None
    unhonoured += body.unknown_fields()
    fields = {
        "keep_alive_s": keep_alive_seconds(body.keep_alive),
        "sampling": sampling,
        "context_limit": num_ctx,
        "context_fit": context_fit(body),
        "response_format": format_to_internal(body.format),
        "think": body.think or None,
    }
    return fields, unhonoured


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def keep_alive_seconds(value: wire.KeepAlive) -> float | None:
    """Ollama's ``keep_alive`` in seconds: a number of seconds, or a Go duration ("5m", "1h30m",
    "-1m"); 0 unloads after the request, a negative value keeps the model loaded."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest(f"invalid keep_alive {value!r}: give seconds or a duration such as '5m'", param="keep_alive")
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    if not text:
        return None  # some clients send an empty string for "the default"
    try:
        return float(text)
    except ValueError:
        pass
    sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidRequest(
            f"invalid keep_alive {value!r}: give seconds or a duration such as '5m' or '1h30m'", param="keep_alive"
        )
    return sign * sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def generate_to_internal(
    body: wire.GenerateRequest, model: str, request_id: str
) -> tuple[GenerationRequest, list[str]]:
    """``/api/generate`` as a chat (the model's template applied) or, with ``raw``, a completion."""
    fields, unhonoured = _common(body)
    if body.template:
        unhonoured.append("template")  # Go templates do not apply; the model's chat template does
    if body.context:
        unhonoured.append("context")
    if body.raw:
        if body.images:
            raise InvalidRequest("images are not supported with raw prompts", param="images")
        request = GenerationRequest(
            request_id=request_id, model=model, kind="completion", prompt=body.prompt or "",
            suffix=body.suffix, raw=True, **fields,
        )
        return request, unhonoured
    messages = []
    if body.system:
        messages.append(ChatMessage(role="system", content=body.system))
    messages.append(ChatMessage(role="user", content=_content(body.prompt, body.images, "prompt")))
    if body.suffix:
        # Fill-in-the-middle needs the raw prompt and suffix, not a chat template.
        request = GenerationRequest(
            request_id=request_id, model=model, kind="completion", prompt=body.prompt or "",
            suffix=body.suffix, **fields,
        )
        return request, unhonoured
    return GenerationRequest(request_id=request_id, model=model, kind="chat", messages=messages, **fields), unhonoured


def message_to_internal(message: wire.Message, index: int) -> ChatMessage:
    """One Ollama message; tool-call arguments become JSON text, tool results keep their name."""
    calls = [
        ToolCall(
            id=c.id or f"call_{index}_{j}",
            function=FunctionCall(name=c.function.name, arguments=json.dumps(c.function.arguments)),
        )
        for j, c in enumerate(message.tool_calls or [])
    ]
    return ChatMessage(
        role=message.role,
        content=_content(message.content, message.images, f"messages[{index}]"),
        name=message.tool_name if message.role == "tool" else None,
        tool_call_id=message.tool_call_id if message.role == "tool" else None,
        tool_calls=calls or None,
        reasoning=message.thinking,
    )


def chat_to_internal(body: wire.ChatRequest, model: str, request_id: str) -> tuple[GenerationRequest, list[str]]:
    """``/api/chat`` as an internal chat request."""
    fields, unhonoured = _common(body)
    tools = [
        ToolSpec(name=t.function.name, description=t.function.description, parameters=t.function.parameters)
        for t in body.tools or []
    ]
    request = GenerationRequest(
        request_id=request_id,
        model=model,
        kind="chat",
        messages=[message_to_internal(m, i) for i, m in enumerate(body.messages)],
        tools=tools or None,
        **fields,
    )
    return request, unhonoured


# -- responses ------------------------------------------------------------------------------


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"value": value}


def tool_calls_wire(calls: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Tool calls with ``arguments`` as JSON objects, as Ollama sends them."""
    return [{"function": {"index": c.index, "name": c.name, "arguments": _arguments(c.arguments)}} for c in calls]


def logprobs_wire(logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Ollama's ``logprobs`` list."""
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": lp.bytes,
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top_logprobs],
        }
        for lp in logprobs
    ]


class Timings:
    """Wall-clock marks of one request, reported in nanoseconds on the final object."""

    def __init__(self) -> None:
        self.start = time.perf_counter_ns()
        self.first: int | None = None

    def mark_token(self) -> None:
        """Record the first output (prompt evaluation ends there)."""
        if self.first is None:
            self.first = time.perf_counter_ns()

    def final_fields(self, prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        """``total_duration`` and friends; durations are at least 1 ns so rates stay finite."""
        end = time.perf_counter_ns()
        first = self.first or end
        return {
            "total_duration": max(end - self.start, 1),
            "load_duration": 0,  # models are loaded when replicas start, never per request
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": max(first - self.start, 1),
            "eval_count": completion_tokens,
            "eval_duration": max(end - first, 1),
        }


def done_reason(finish_reason: str | None) -> str:
    """Ollama's ``done_reason``: ``length`` or ``stop`` (tool calls end with ``stop`` too)."""
    return "length" if finish_reason == "length" else "stop"


def chunk_fields(chunk: GenerationChunk, is_chat: bool) -> dict[str, Any]:
    """The part of a streamed object that carries one chunk's output."""
    out: dict[str, Any] = {}
    if is_chat:
        message: dict[str, Any] = {"role": "assistant", "content": chunk.text}
        if chunk.reasoning:
            message["thinking"] = chunk.reasoning
        if chunk.tool_calls:
            message["tool_calls"] = tool_calls_wire(chunk.tool_calls)
        out["message"] = message
    else:
        out["response"] = chunk.text
        if chunk.reasoning:
            out["thinking"] = chunk.reasoning
    if chunk.logprobs:
        out["logprobs"] = logprobs_wire(chunk.logprobs)
    return out


def result_fields(result: GenerationResult, is_chat: bool) -> dict[str, Any]:
    """The output part of a non-streamed object: the fold of the stream."""
    choice = result.choices[0] if result.choices else None
    chunk = GenerationChunk(
        text=choice.text if choice else "",
        reasoning=choice.reasoning if choice else "",
        tool_calls=choice.tool_calls if choice and choice.tool_calls else None,
        logprobs=choice.logprobs if choice else None,
    )
    return chunk_fields(chunk, is_chat)


def load_reply(model: str, is_chat: bool, unload: bool) -> dict[str, Any]:
    """The reply to an empty prompt: the model is (already) loaded, or unload was asked for."""
    body: dict[str, Any] = {"model": model, "created_at": rfc3339_nano()}
    if is_chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    body.update({"done": True, "done_reason": "unload" if unload else "load"})
    return body


def digest_of(card: ModelCard) -> str:
    """The model's digest: of its files when known, else of its name (a model without files)."""
    return card.digest or hashlib.sha256(card.name.encode()).hexdigest()


def details(card: ModelCard) -> dict[str, Any]:
    """Ollama's ``details`` object."""
    return {
        "parent_model": card.base_model or "",
        "format": card.format,
        "family": card.family,
        "families": [card.family] if card.family else None,
        "parameter_size": card.parameter_size,
        "quantization_level": card.quantization_level,
    }


def tags_entry(status: ModelStatus) -> dict[str, Any]:
    """One ``/api/tags`` entry, with our ``state`` extension."""
    card = status.card
    return {
        "name": card.name,
        "model": card.name,
        "modified_at": rfc3339_nano(card.created * 1_000_000_000),
        "size": card.size_bytes,
        "digest": digest_of(card),
        "details": details(card),
        "state": status.state,
    }


NEVER_EXPIRES = "2318-01-01T00:00:00.000000000Z"


def _expiry(expires_at: float | None) -> str:
    if expires_at is None or expires_at >= 1e10:
        return NEVER_EXPIRES
    return rfc3339_nano(int(expires_at * 1_000_000_000))


def ps_entry(status: ModelStatus) -> dict[str, Any]:
    """One ``/api/ps`` entry: a model with live replicas, and how many."""
    card = status.card
    return {
        "name": card.name,
        "model": card.name,
        "size": card.size_bytes,
        "digest": digest_of(card),
        "details": details(card),
        # When it unloads if left idle; a model that never does shows Ollama's far future.
        "expires_at": _expiry(status.expires_at),
        "size_vram": card.size_vram_bytes,
        "context_length": card.context_length,
        "replicas": status.replicas,
    }


def modelfile(card: ModelCard) -> str:
    """The model as a Modelfile would make it: a base, or a base with its LoRA adapter."""
    header = "# Served by the LLM serving cluster; models are managed in config.yaml.\n"
    if card.base_model is None:
        return f"{header}FROM {card.name}\n"
    return f"{header}FROM {card.base_model}\nADAPTER {card.name}\n"


def show_body(card: ModelCard) -> dict[str, Any]:
    """``/api/show`` for a configured model."""
    arch = card.family or "unknown"
    info: dict[str, Any] = {"general.architecture": arch, f"{arch}.context_length": card.context_length}
    if card.embedding_dimensions:
        info[f"{arch}.embedding_length"] = card.embedding_dimensions
    return {
        "license": "",
        "modelfile": modelfile(card),
        "parameters": "",
        "template": "",
        "details": details(card),
        "model_info": info,
        "capabilities": list(card.capabilities),
        "modified_at": rfc3339_nano(card.created * 1_000_000_000),
    }

