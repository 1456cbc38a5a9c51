"""Pure translation between Anthropic's Messages API and the internal types.

A Messages request becomes one internal chat request: ``system`` leads as a system message, each
``tool_result`` block becomes a tool message, ``tool_use`` blocks become the assistant's tool
calls and ``thinking`` blocks its reasoning. A generation becomes a ``message`` whose content
blocks are, in order, the reasoning (``thinking``), the text and the tool calls (``tool_use``);
streamed, the same blocks arrive as Anthropic's typed events (:class:`MessageEvents`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any

from serve_app.apis.anthropic import schemas as wire
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    ChoiceResult,
    ContentPart,
    ContextFit,
    FunctionCall,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ImagePart,
    ResponseFormat,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

logger = logging.getLogger(__name__)

# What a tool result marked ``is_error`` says to the model (chat templates have no such flag).
TOOL_ERROR_PREFIX = "Error: "


def new_message_id() -> str:
    """A fresh message id in Anthropic's style (``msg_`` and 24 hex digits)."""
    return f"msg_{uuid.uuid4().hex[:24]}"


# -- requests -------------------------------------------------------------------------------


def _image(block: wire.ImageBlock, param: str) -> ImagePart:
    source = block.source
    if not isinstance(source, wire.Base64ImageSource):
        raise Unsupported(
            f"Only base64 image sources are supported, not '{source.type}'.", param=f"{param}.source.type"
        )
    try:
        base64.b64decode(source.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"The image data is not valid base64: {exc}", param=f"{param}.source.data") from exc
    return ImagePart(media_type=source.media_type, data_base64=source.data)


def _parts_content(parts: list[ContentPart]) -> str | list[ContentPart]:
    """One text part as a plain string (what every chat template takes), several as a list."""
    if len(parts) == 1 and isinstance(parts[0], TextPart):
        return parts[0].text
    return parts


def _tool_result(block: wire.ToolResultBlock, param: str) -> ChatMessage:
    parts: list[ContentPart] = []
    if isinstance(block.content, str):
        parts.append(TextPart(text=block.content))
    else:
        for j, item in enumerate(block.content or []):
            if isinstance(item, wire.TextBlock):
                parts.append(TextPart(text=item.text))
            else:
                parts.append(_image(item, f"{param}.content[{j}]"))
    if block.is_error:
        if parts and isinstance(parts[0], TextPart):
            parts[0] = TextPart(text=TOOL_ERROR_PREFIX + parts[0].text)
        else:
            parts.insert(0, TextPart(text=TOOL_ERROR_PREFIX.strip()))
    content = _parts_content(parts) if parts else ""
    return ChatMessage(role="tool", content=content, tool_call_id=block.tool_use_id)


def _user_messages(message: wire.Message, index: int) -> list[ChatMessage]:
    """A user turn: its tool results as tool messages, its text and images as user messages,
    in the order they came."""
    if isinstance(message.content, str):
        return [ChatMessage(role="user", content=message.content)]
    out: list[ChatMessage] = []
    pending: list[ContentPart] = []

    def flush() -> None:
        if pending:
            out.append(ChatMessage(role="user", content=_parts_content(list(pending))))
            pending.clear()

    for j, block in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(block, wire.TextBlock):
            pending.append(TextPart(text=block.text))
        elif isinstance(block, wire.ImageBlock):
            pending.append(_image(block, param))
        elif isinstance(block, wire.ToolResultBlock):
            flush()
            out.append(_tool_result(block, param))
        elif isinstance(block, wire.DocumentBlock):
            raise Unsupported("Document blocks are not supported; send the text as a text block.", param=param)
        else:
            raise InvalidRequest(f"A user message cannot hold a '{block.type}' block.", param=f"{param}.type")
    flush()
    return out


def _assistant_message(message: wire.Message, index: int) -> ChatMessage:
    if isinstance(message.content, str):
        return ChatMessage(role="assistant", content=message.content)
    texts: list[ContentPart] = []
    calls: list[ToolCall] = []
    reasoning: list[str] = []
    for j, block in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(block, wire.TextBlock):
            texts.append(TextPart(text=block.text))
        elif isinstance(block, wire.ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments)))
        elif isinstance(block, wire.ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, wire.RedactedThinkingBlock):
            continue  # opaque to any model but the one that wrote it
        else:
            raise InvalidRequest(f"An assistant message cannot hold a '{block.type}' block.", param=f"{param}.type")
    return ChatMessage(
        role="assistant",
        content=_parts_content(texts) if texts else None,
        tool_calls=calls or None,
        reasoning="".join(reasoning) or None,
    )


def _system(system: str | list[wire.TextBlock] | None) -> list[ChatMessage]:
    if system is None:
        return []
    text = system if isinstance(system, str) else "\n".join(block.text for block in system)
    return [ChatMessage(role="system", content=text)] if text else []


def _tools(body: wire.CountTokensRequest) -> tuple[list[ToolSpec] | None, str, list[str]]:
    """The custom tools, the internal tool choice, and what of them is not honoured."""
    unhonoured: list[str] = []
    tools: list[ToolSpec] = []
    for i, tool in enumerate(body.tools or []):
        if tool.type not in (None, "custom"):
            raise Unsupported(
                f"Server tool '{tool.type}' is not supported; only custom tools "
                "(name, description, input_schema) can be called.",
                param=f"tools[{i}].type",
            )
        if tool.input_schema is None:
            raise InvalidRequest(f"tools.{i}.input_schema: Field required", param=f"tools[{i}].input_schema")
        tools.append(ToolSpec(name=tool.name, description=tool.description, parameters=tool.input_schema))
    choice = body.tool_choice
    if choice is None or isinstance(choice, wire.ToolChoiceAuto):
        internal = "auto"
    elif isinstance(choice, wire.ToolChoiceNone):
        internal = "none"
    elif isinstance(choice, wire.ToolChoiceAny):
        internal = "required"
    else:
        internal = choice.name
        if choice.name not in {t.name for t in tools}:
            raise InvalidRequest(f"tool_choice names '{choice.name}', which is not in 'tools'", param="tool_choice.name")
    if internal == "required" and not tools:
        raise InvalidRequest("tool_choice 'any' needs 'tools'", param="tool_choice")
    if choice is not None and getattr(choice, "disable_parallel_tool_use", None):
        unhonoured.append("tool_choice.disable_parallel_tool_use")
    return tools or None, internal, unhonoured


def _think(thinking: wire.Thinking | None, unhonoured: list[str]) -> bool | None:
    """Anthropic's ``thinking`` as the internal switch; ``adaptive`` leaves it to the model."""
    if thinking is None or thinking.type == "adaptive":
        return None
    if thinking.type == "disabled":
        return False
    if thinking.budget_tokens is not None:
        unhonoured.append("thinking.budget_tokens")
    return True


def _conversation(body: wire.CountTokensRequest) -> list[ChatMessage]:
    messages = _system(body.system)
    for i, message in enumerate(body.messages):
        if message.role == "user":
            messages.extend(_user_messages(message, i))
        else:
            messages.append(_assistant_message(message, i))
    return messages


def _shaping(body: wire.CountTokensRequest) -> tuple[dict[str, Any], list[str]]:
    """The internal request's fields that shape the prompt (count_tokens needs only these)."""
    unhonoured = [name for name in wire.UNHONOURED_FIELDS if getattr(body, name, None) is not None]
    tools, tool_choice, tool_unhonoured = _tools(body)
    unhonoured += tool_unhonoured
    fmt = ResponseFormat()
    output = body.output_config
    if output is not None:
        if output.format is not None:
            fmt = ResponseFormat(type="json_schema", json_schema=output.format.schema_)
        if output.effort is not None:
            unhonoured.append("output_config.effort")
    fields = {
        "kind": "chat",
        "messages": _conversation(body),
        "tools": tools,
        "tool_choice": tool_choice,
        "think": _think(body.thinking, unhonoured),
        "response_format": fmt,
    }
    return fields, unhonoured


def count_request_to_internal(
    body: wire.CountTokensRequest, model: str, request_id: str
) -> tuple[GenerationRequest, list[str]]:
    """The internal chat request whose prompt ``count_tokens`` measures."""
    fields, unhonoured = _shaping(body)
    return GenerationRequest(request_id=request_id, model=model, **fields), unhonoured


def messages_request_to_internal(
    body: wire.MessagesRequest, model: str, request_id: str
) -> tuple[GenerationRequest, list[str]]:
    """An internal chat request, plus the names of accepted fields we cannot honour."""
    if body.messages[-1].role == "assistant":
        # Anthropic's own answer on models without prefill: a 400, not a silent fresh turn.
        raise Unsupported(
            "Prefill is not supported: the last message must be a user message "
            "(a trailing assistant message would not be continued).",
            param="messages",
        )
    fields, unhonoured = _shaping(body)
    sampling = SamplingParams(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k or None,  # Anthropic's 0 and vLLM's -1 both mean "no cut-off"
        stop=list(body.stop_sequences or []),
    )
    user = body.metadata.user_id if body.metadata is not None else None
    request = GenerationRequest(
        request_id=request_id,
        model=model,
        sampling=sampling,
        user=user,
        # max_tokens is a ceiling here: agents send 32k whatever the model's context, so output
        # that would overflow it ends with stop_reason max_tokens; a prompt over it is refused.
        context_fit=ContextFit(truncate=False),
        **fields,
    )
    return request, unhonoured


# -- replies --------------------------------------------------------------------------------


def usage_dict(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens the prefix cache did not hold."""
    usage = usage or Usage()
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cached_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def stop_fields(finish: str | None, stop_sequence: str | None, called_tools: bool) -> dict[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence``: the output limit wins, then tool
    calls, then a matched stop string, else the model's own end of turn."""
    if finish == "length":
        reason = "max_tokens"
    elif called_tools:
        reason = "tool_use"
    elif finish == "stop" and stop_sequence is not None:
        reason = "stop_sequence"
    else:
        reason = "end_turn"
    return {"stop_reason": reason, "stop_sequence": stop_sequence if reason == "stop_sequence" else None}


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the ``input`` object Anthropic carries."""
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        logger.warning("tool call arguments are not JSON; sent as an empty input: %r", arguments[:200])
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _tool_use_block(call: ToolCallDelta) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call.arguments)}


EMPTY_TEXT_BLOCK: dict[str, Any] = {"type": "text", "text": ""}


def content_blocks(choice: ChoiceResult) -> list[dict[str, Any]]:
    """The reply's content blocks: thinking, text, tool uses; one empty text block when the
    model said nothing (clients read ``content[0]``)."""
    blocks: list[dict[str, Any]] = []
    if choice.reasoning:
        blocks.append({"type": "thinking", "thinking": choice.reasoning, "signature": ""})
    if choice.text:
        blocks.append({"type": "text", "text": choice.text})
    blocks.extend(_tool_use_block(call) for call in choice.tool_calls)
    return blocks or [dict(EMPTY_TEXT_BLOCK)]


def message_body(result: GenerationResult, model: str, message_id: str) -> dict[str, Any]:
    """The non-streamed ``message`` object: the fold of the same stream a streamed reply sends."""
    choice = result.choices[0] if result.choices else ChoiceResult(index=0)
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content_blocks(choice),
        **stop_fields(choice.finish_reason, choice.stop_sequence, bool(choice.tool_calls)),
        "usage": usage_dict(result.usage),
    }


class MessageEvents:
    """Turns one generation's chunks into Anthropic's stream events (dicts with a ``type``).

    ``message_start`` and a ``ping`` open the stream; each run of reasoning or text is one
    content block (``thinking_delta`` / ``text_delta``), each tool call a ``tool_use`` block with
    its input in one ``input_json_delta``; ``message_delta`` (stop reason, final usage) and
    ``message_stop`` close it.
    """

    def __init__(self, model: str, message_id: str) -> None:
        self.model = model
        self.message_id = message_id
        self.started = False
        self.index = -1
        self.open: str | None = None  # the type of the block being streamed
        self.finish: str | None = None
        self.stop_sequence: str | None = None
        self.called_tools = False
        self.usage: Usage | None = None

    def _start(self, prompt_tokens: int | None) -> list[dict[str, Any]]:
        self.started = True
        message = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens or 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}, {"type": "ping"}]

    def _close_block(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        events: list[dict[str, Any]] = []
        if self.open == "thinking":
            # Anthropic signs its thinking; ours has no signature, and clients accept it empty.
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "signature_delta", "signature": ""}})
        events.append({"type": "content_block_stop", "index": self.index})
        self.open = None
        return events

    def _open_block(self, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self._close_block()
        self.index += 1
        self.open = block["type"]
        events.append({"type": "content_block_start", "index": self.index, "content_block": block})
        return events

    def _delta(self, kind: str, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if self.open != kind:
            events = self._open_block({"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking"
                                      else {"type": "text", "text": ""})
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        events.append({"type": "content_block_delta", "index": self.index, "delta": delta})
        return events

    def chunk(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        """The events one chunk adds (``message_start`` first, before the first chunk's)."""
        events = [] if self.started else self._start(chunk.prompt_tokens)
        if chunk.reasoning:
            events += self._delta("thinking", chunk.reasoning)
        if chunk.text:
            events += self._delta("text", chunk.text)
        for call in chunk.tool_calls or []:
            events += self._open_block({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            partial = json.dumps(tool_input(call.arguments), ensure_ascii=False)
            events.append({"type": "content_block_delta", "index": self.index,
                           "delta": {"type": "input_json_delta", "partial_json": partial}})
            events += self._close_block()
            self.called_tools = True
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
            self.stop_sequence = chunk.stop_sequence
        if chunk.usage is not None:
            self.usage = chunk.usage
        return events

    def closing(self) -> list[dict[str, Any]]:
        """The events that end the stream: the last block's stop, ``message_delta`` and
        ``message_stop``."""
        events = [] if self.started else self._start(None)
        events += self._close_block()
        if self.index < 0:
            events += self._open_block(dict(EMPTY_TEXT_BLOCK))
            events += self._close_block()
        events.append({
            "type": "message_delta",
            "delta": stop_fields(self.finish, self.stop_sequence, self.called_tools),
            "usage": usage_dict(self.usage),
        })
        events.append({"type": "message_stop"})
        return events
