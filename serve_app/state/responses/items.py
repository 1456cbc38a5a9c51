"""Responses items: stored in their wire shape, turned into internal chat messages on demand.

Input items are normalized once (ids assigned, string content as parts) and stored that way, so
``input_items``, conversation items and the history a later turn is rebuilt from all read the
same JSON.
"""

from __future__ import annotations

from typing import Any

from serve_app.apis.openai.adapter import image_from_url
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import ChatMessage, ContentPart, FunctionCall, TextPart, ToolCall
from serve_app.state.responses import schemas as wire
from serve_app.state.store import Json, new_id

_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def _part(part: Any, param: str) -> Json:
    if isinstance(part, wire.InputText):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, wire.OutputText):
        return {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}
    if isinstance(part, wire.Refusal):
        return {"type": "refusal", "refusal": part.refusal}
    if isinstance(part, wire.InputImage):
        if part.image_url is None:
            raise Unsupported("Images must be given as base64 data URLs in 'image_url'; file ids are not supported.",
                              param=f"{param}.image_url")
        image_from_url(part.image_url, f"{param}.image_url")  # refused now, not when replayed
        return {"type": "input_image", "image_url": part.image_url, "detail": part.detail or "auto"}
    raise Unsupported("'input_file' content is not supported on this server.", param=f"{param}.type")


def _parts(content: str | list[Any], role: str, param: str) -> list[Json]:
    if isinstance(content, str):
        kind = "output_text" if role == "assistant" else "input_text"
        return [{"type": kind, "text": content, **({"annotations": [], "logprobs": []} if kind == "output_text" else {})}]
    return [_part(p, f"{param}[{j}]") for j, p in enumerate(content)]


def normalize_item(item: Any, param: str) -> Json:
    """One input item as it is stored and listed (with an id and, for messages, parts)."""
    if isinstance(item, wire.ItemReference):
        raise Unsupported("'item_reference' items are not supported; send the item itself.", param=f"{param}.type")
    kind = item.type
    item_id = item.id or new_id(_ID_PREFIX[kind])
    if isinstance(item, wire.MessageItem):
        return {
            "type": "message",
            "id": item_id,
            "status": "completed",
            "role": item.role,
            "content": _parts(item.content, item.role, f"{param}.content"),
        }
    if isinstance(item, wire.FunctionCallItem):
        return {
            "type": "function_call",
            "id": item_id,
            "status": "completed",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }
    if isinstance(item, wire.FunctionCallOutputItem):
        output = item.output if isinstance(item.output, str) else _parts(item.output, "user", f"{param}.output")
        return {"type": "function_call_output", "id": item_id, "status": "completed", "call_id": item.call_id,
                "output": output}
    reasoning: Json = {"type": "reasoning", "id": item_id, "summary": item.summary}
    if item.content is not None:
        reasoning["content"] = item.content
    return reasoning


def normalize_input(value: str | list[Any], param: str = "input") -> list[Json]:
    """The request's ``input`` as stored items (a string is one user message)."""
    if isinstance(value, str):
        return [normalize_item(wire.MessageItem(role="user", content=value), param)]
    return [normalize_item(item, f"{param}[{i}]") for i, item in enumerate(value)]


def _text_of(parts: list[Json]) -> str:
    return "".join(p.get("text") or p.get("refusal") or "" for p in parts if p.get("type") != "input_image")


def _content(parts: list[Json], param: str) -> str | list[ContentPart]:
    if not any(p.get("type") == "input_image" for p in parts):
        return _text_of(parts)
    content: list[ContentPart] = []
    for j, part in enumerate(parts):
        if part.get("type") == "input_image":
            content.append(image_from_url(part["image_url"], f"{param}[{j}].image_url"))
        else:
            content.append(TextPart(text=part.get("text") or part.get("refusal") or ""))
    return content


def items_to_messages(items: list[Json], param: str = "input") -> list[ChatMessage]:
    """Stored items as the chat turns an engine's template renders.

    Function calls join the assistant turn before them (one turn may call several tools);
    reasoning items are dropped, as chat templates drop earlier reasoning.
    """
    messages: list[ChatMessage] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "message":
            messages.append(ChatMessage(role=item["role"], content=_content(item["content"], f"{param}[{i}].content")))
        elif kind == "function_call":
            call = ToolCall(id=item["call_id"], function=FunctionCall(name=item["name"], arguments=item["arguments"]))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            output = item["output"]
            text = output if isinstance(output, str) else _text_of(output)
            messages.append(ChatMessage(role="tool", content=text, tool_call_id=item["call_id"]))
        elif kind != "reasoning":
            raise InvalidRequest(f"Unknown item type '{kind}'.", param=f"{param}[{i}].type")
    return messages
