"""A Responses request as an internal chat request, and the ``response`` object's fixed fields."""

from __future__ import annotations

import time
from typing import Any

from serve_app.apis.openai.adapter import set_fields
from serve_app.core.errors import Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    ContextFit,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    ToolSpec,
)
from serve_app.state.responses import schemas as wire
from serve_app.state.store import Json

# Include values we honour (none change what we send yet); the rest are named as unsupported.
_HONOURED_INCLUDES: frozenset[str] = frozenset()


def _response_format(text: wire.TextConfig | None) -> ResponseFormat:
    fmt = text.format if text is not None else None
    if isinstance(fmt, wire.TextFormatJsonObject):
        return ResponseFormat(type="json_object")
    if isinstance(fmt, wire.TextFormatJsonSchema):
        return ResponseFormat(type="json_schema", json_schema=fmt.schema_ or {"type": "object"})
    return ResponseFormat()


def _tools(body: wire.ResponseCreateRequest) -> list[ToolSpec]:
    tools = []
    for i, tool in enumerate(body.tools or []):
        if not isinstance(tool, wire.FunctionTool):
            raise Unsupported(f"Tools of type '{tool.type}' are not supported; only 'function' tools are.",
                              param=f"tools[{i}].type")
        tools.append(ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters))
    return tools


def unhonoured_fields(body: wire.ResponseCreateRequest) -> list[str]:
    """Fields the client set that we accept but cannot honour (the x-unsupported-params header)."""
    names = set_fields(body, wire.UNHONOURED_FIELDS)
    if any(value not in _HONOURED_INCLUDES for value in body.include or []):
        names.append("include")
    return names


def to_internal(
    body: wire.ResponseCreateRequest, model: str, request_id: str, history: list[ChatMessage], new: list[ChatMessage]
) -> GenerationRequest:
    """The chat request one turn makes: instructions, then the earlier turns, then the new input.

    ``truncation: auto`` drops the oldest turns to fit the context (the system turn stays);
    without it, a conversation over the context is a 400, like any request.
    """
    messages = ([ChatMessage(role="system", content=body.instructions)] if body.instructions else []) + history + new
    tool_choice = body.tool_choice or "auto"
    if isinstance(tool_choice, wire.FunctionToolChoice):
        tool_choice = tool_choice.name
    tools = _tools(body)
    return GenerationRequest(
        request_id=request_id,
        model=model,
        kind="chat",
        messages=messages,
        sampling=SamplingParams(max_tokens=body.max_output_tokens, temperature=body.temperature, top_p=body.top_p),
        response_format=_response_format(body.text),
        tools=tools or None,
        tool_choice=tool_choice if tools else "auto",
        context_fit=ContextFit(truncate=True, keep_tokens=0, shift=False) if body.truncation == "auto" else None,
        include_usage=True,
        user=body.user,
    )


def _text_echo(text: wire.TextConfig | None) -> Json:
    fmt = text.format if text is not None else None
    if fmt is None:
        format_body: Json = {"type": "text"}
    else:
        format_body = fmt.model_dump(by_alias=True, exclude_none=True)
    return {"format": format_body, "verbosity": (text.verbosity if text else None) or "medium"}


def _tool_choice_echo(choice: Any) -> Any:
    if isinstance(choice, wire.FunctionToolChoice):
        return {"type": "function", "name": choice.name}
    return choice or "auto"


def _tool_body(tool: Any) -> dict[str, Any]:
    """A tool as the Response lists it; a function tool always says ``strict`` (null if unset)."""
    dumped: dict[str, Any] = tool.model_dump(exclude_none=True)
    if dumped.get("type") == "function":
        dumped.setdefault("strict", None)
    return dumped


def response_skeleton(body: wire.ResponseCreateRequest, response_id: str, conversation_id: str | None) -> Json:
    """The ``response`` object before any output: what the request asked for, echoed.

    ``usage`` comes with the output and ``user`` only when sent: OpenAI's document has no null
    for either, so they are left out rather than null.
    """
    skeleton: Json = {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": bool(body.background),
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "model": body.model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls if body.parallel_tool_calls is not None else True,
        "previous_response_id": body.previous_response_id,
        "conversation": {"id": conversation_id} if conversation_id else None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.store is not False,
        "temperature": body.temperature if body.temperature is not None else 1.0,
        "text": _text_echo(body.text),
        "tool_choice": _tool_choice_echo(body.tool_choice),
        "tools": [_tool_body(t) for t in body.tools or []],
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "truncation": body.truncation or "disabled",
        "metadata": body.metadata or {},
    }
    if body.user is not None:
        skeleton["user"] = body.user
    return skeleton
