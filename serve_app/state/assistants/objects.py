"""Pure functions of the Assistants API: wire objects from requests, and a run as one internal
chat request (instructions, the thread's messages, the run's own tool calls and outputs)."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel

from serve_app.apis.openai.adapter import image_from_url
from serve_app.apis.openai.schemas import ResponseFormatJsonObject, ResponseFormatJsonSchema
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    ContentPart,
    ContextFit,
    FunctionCall,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolSpec,
)
from serve_app.state.assistants import schemas as wire
from serve_app.state.store import Json, new_id

RUN_EXPIRY_S = 600  # OpenAI's: a run waiting for tool outputs expires after ten minutes


def now_s() -> int:
    return int(time.time())


# -- validation -----------------------------------------------------------------------------


def check_tools(tools: list[wire.ToolWire] | None, param: str = "tools") -> list[Json]:
    """Function tools as stored; any other tool is a 400 naming it (nothing is silently dropped)."""
    out: list[Json] = []
    for i, tool in enumerate(tools or []):
        if tool.type != "function":
            raise Unsupported(
                f"The '{tool.type}' tool is not supported on this server; only function tools are.",
                param=f"{param}[{i}].type",
            )
        if tool.function is None:
            raise InvalidRequest("A function tool needs 'function'.", param=f"{param}[{i}].function")
        out.append({"type": "function", "function": tool.function.model_dump(exclude_none=True)})
    return out


def _has_ids(value: Any) -> bool:
    """Whether ``value`` names any file or vector store (empty lists, as clients send, do not)."""
    if isinstance(value, dict):
        return any(_has_ids(v) for v in value.values())
    if isinstance(value, list):
        return any(not isinstance(v, (dict, list)) or _has_ids(v) for v in value)
    return value is not None and value is not False and value != ""


def check_no_files(value: Any, param: str) -> None:
    """File ids (tool resources, attachments) need a Files API this server does not have."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if _has_ids(value):
        raise Unsupported("File ids are not supported on this server (no Files API).", param=param)


def response_format_json(fmt: wire.ResponseFormat | None) -> Any:
    if fmt is None or fmt == "auto":
        return "auto"
    return fmt.model_dump(by_alias=True, exclude_none=True)  # type: ignore[union-attr]


# -- objects --------------------------------------------------------------------------------


def assistant_object(body: wire.AssistantCreate, assistant_id: str | None = None) -> Json:
    check_no_files(body.tool_resources, "tool_resources")
    return {
        "id": assistant_id or new_id("asst"),
        "object": "assistant",
        "created_at": now_s(),
        "name": body.name,
        "description": body.description,
        "model": body.model,
        "instructions": body.instructions,
        "tools": check_tools(body.tools),
        "tool_resources": {},
        "metadata": body.metadata or {},
        "temperature": body.temperature,
        "top_p": body.top_p,
        "response_format": response_format_json(body.response_format),
    }


def updated_assistant(stored: Json, body: wire.AssistantUpdate) -> Json:
    check_no_files(body.tool_resources, "tool_resources")
    changes: Json = {}
    for name in ("name", "description", "model", "instructions", "metadata", "temperature", "top_p"):
        if name in body.model_fields_set:
            changes[name] = getattr(body, name)
    if "tools" in body.model_fields_set:
        changes["tools"] = check_tools(body.tools)
    if "response_format" in body.model_fields_set:
        changes["response_format"] = response_format_json(body.response_format)
    if changes.get("metadata") is None and "metadata" in changes:
        changes["metadata"] = {}
    return {**stored, **changes}


def thread_object(metadata: dict[str, str] | None, thread_id: str | None = None) -> Json:
    return {"id": thread_id or new_id("thread"), "object": "thread", "created_at": now_s(),
            "metadata": metadata or {}, "tool_resources": {}}


def _content_parts(content: str | list[Any], param: str) -> list[Json]:
    if isinstance(content, str):
        return [{"type": "text", "text": {"value": content, "annotations": []}}]
    parts: list[Json] = []
    for j, part in enumerate(content):
        if isinstance(part, wire.TextPartWire):
            parts.append({"type": "text", "text": {"value": part.text, "annotations": []}})
        elif isinstance(part, wire.ImageUrlPartWire):
            image_from_url(part.image_url.url, f"{param}[{j}].image_url.url")  # data URLs only, checked now
            parts.append({"type": "image_url", "image_url": part.image_url.model_dump(exclude_none=True)})
        else:
            check_no_files(True, f"{param}[{j}].image_file")
    return parts


def message_object(body: wire.MessageCreate, thread_id: str, param: str = "content", *,
                   run_id: str | None = None, assistant_id: str | None = None) -> Json:
    check_no_files(body.attachments, "attachments")
    created = now_s()
    return {
        "id": new_id("msg"),
        "object": "thread.message",
        "created_at": created,
        "thread_id": thread_id,
        "status": "completed",
        "incomplete_details": None,
        "completed_at": created,
        "incomplete_at": None,
        "role": body.role,
        "content": _content_parts(body.content, param),
        "assistant_id": assistant_id,
        "run_id": run_id,
        "attachments": [],
        "metadata": body.metadata or {},
    }


def run_object(body: wire._RunFields, assistant: Json, thread_id: str) -> Json:
    """A new run (``queued``), its settings resolved against the assistant's."""
    tools = check_tools(body.tools) if body.tools is not None else assistant["tools"]
    tool_choice: Any = body.tool_choice or "auto"
    if isinstance(tool_choice, wire.ToolChoiceObject):
        if tool_choice.type != "function" or tool_choice.function is None:
            raise Unsupported(f"tool_choice '{tool_choice.type}' is not supported; only function tools are.",
                              param="tool_choice")
        if tool_choice.function.name not in {t["function"]["name"] for t in tools}:
            raise InvalidRequest(f"tool_choice names '{tool_choice.function.name}', which is not a tool of the run.",
                                 param="tool_choice")
        tool_choice = tool_choice.model_dump(exclude_none=True)
    elif tool_choice == "required" and not tools:
        raise InvalidRequest("tool_choice 'required' needs tools.", param="tool_choice")
    created = now_s()
    truncation = body.truncation_strategy
    return {
        "id": new_id("run"),
        "object": "thread.run",
        "created_at": created,
        "thread_id": thread_id,
        "assistant_id": assistant["id"],
        "status": "queued",
        "required_action": None,
        "last_error": None,
        "expires_at": created + RUN_EXPIRY_S,
        "started_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "incomplete_details": None,
        "model": body.model or assistant["model"],
        "instructions": body.instructions if body.instructions is not None else (assistant.get("instructions") or ""),
        "tools": tools,
        "metadata": body.metadata or {},
        "usage": None,
        "temperature": body.temperature if body.temperature is not None else assistant.get("temperature"),
        "top_p": body.top_p if body.top_p is not None else assistant.get("top_p"),
        "max_prompt_tokens": body.max_prompt_tokens,
        "max_completion_tokens": body.max_completion_tokens,
        "truncation_strategy": truncation.model_dump() if truncation else {"type": "auto", "last_messages": None},
        "response_format": (response_format_json(body.response_format) if body.response_format is not None
                            else assistant.get("response_format", "auto")),
        "tool_choice": tool_choice,
        "parallel_tool_calls": body.parallel_tool_calls is not False,
    }


def step_object(run: Json, step_type: str, details: Json) -> Json:
    return {
        "id": new_id("step"),
        "object": "thread.run.step",
        "created_at": now_s(),
        "assistant_id": run["assistant_id"],
        "thread_id": run["thread_id"],
        "run_id": run["id"],
        "type": step_type,
        "status": "in_progress",
        "step_details": {"type": step_type, step_type: details} if step_type == "message_creation"
        else {"type": step_type, "tool_calls": details},
        "last_error": None,
        "expired_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "metadata": {},
        "usage": None,
    }


def assistant_message(run: Json) -> Json:
    """The (empty, in progress) message a run writes its answer into."""
    return {
        "id": new_id("msg"), "object": "thread.message", "created_at": now_s(), "thread_id": run["thread_id"],
        "status": "in_progress", "incomplete_details": None, "completed_at": None, "incomplete_at": None,
        "role": "assistant", "content": [], "assistant_id": run["assistant_id"], "run_id": run["id"],
        "attachments": [], "metadata": {},
    }


def deleted(object_id: str, kind: str) -> Json:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


# -- a run as an internal request -----------------------------------------------------------


def _message_to_internal(message: Json) -> ChatMessage:
    parts: list[ContentPart] = []
    for j, part in enumerate(message.get("content") or []):
        if part["type"] == "text":
            parts.append(TextPart(text=part["text"]["value"]))
        elif part["type"] == "image_url":
            parts.append(image_from_url(part["image_url"]["url"], f"content[{j}].image_url.url"))
    content: str | list[ContentPart] = parts[0].text if len(parts) == 1 and isinstance(parts[0], TextPart) else parts
    return ChatMessage(role=message["role"], content=content)


def _transcript_to_internal(entry: Json) -> ChatMessage:
    if entry["role"] == "tool":
        return ChatMessage(role="tool", content=entry["content"], tool_call_id=entry["tool_call_id"])
    calls = [ToolCall(id=c["id"], function=FunctionCall(name=c["function"]["name"], arguments=c["function"]["arguments"]))
             for c in entry["tool_calls"]]
    return ChatMessage(role="assistant", content=None, tool_calls=calls)


def _response_format(value: Any) -> ResponseFormat:
    if not isinstance(value, dict):
        return ResponseFormat()
    if value.get("type") == "json_object":
        ResponseFormatJsonObject.model_validate(value)
        return ResponseFormat(type="json_object")
    if value.get("type") == "json_schema":
        schema = ResponseFormatJsonSchema.model_validate(value).json_schema.schema_ or {"type": "object"}
        return ResponseFormat(type="json_schema", json_schema=schema)
    return ResponseFormat()


ADDITIONAL_INSTRUCTIONS = "instructions"  # the transcript entry holding a run's additional_instructions


def additional_instructions_entry(text: str | None) -> list[Json]:
    """The run's ``additional_instructions`` as kept in its transcript (every continuation of the
    run, on any replica, is given them again)."""
    return [{"role": ADDITIONAL_INSTRUCTIONS, "content": text}] if text else []


def run_request(run: Json, messages: list[Json], transcript: list[Json], model: str, request_id: str) -> GenerationRequest:
    """The chat the model sees for ``run``: instructions, the thread's messages (oldest first, cut
    by ``truncation_strategy``), then the run's own tool calls and outputs."""
    truncation = run.get("truncation_strategy") or {}
    if truncation.get("type") == "last_messages" and truncation.get("last_messages"):
        messages = messages[-int(truncation["last_messages"]):]
    extra = [e["content"] for e in transcript if e["role"] == ADDITIONAL_INSTRUCTIONS]
    instructions = "\n\n".join(p for p in (run.get("instructions"), *extra) if p)
    chat = [ChatMessage(role="system", content=instructions)] if instructions else []
    chat += [_message_to_internal(m) for m in messages]
    chat += [_transcript_to_internal(e) for e in transcript if e["role"] != ADDITIONAL_INSTRUCTIONS]
    choice = run.get("tool_choice") or "auto"
    tool_choice = choice["function"]["name"] if isinstance(choice, dict) else choice
    if any(e["role"] == "tool" for e in transcript) and tool_choice != "none":
        tool_choice = "auto"  # a forced call is made once; with its output back the model may answer
    tools = [ToolSpec(name=t["function"]["name"], description=t["function"].get("description"),
                      parameters=t["function"].get("parameters")) for t in run.get("tools") or []]
    return GenerationRequest(
        request_id=request_id,
        model=model,
        kind="chat",
        messages=chat,
        sampling=SamplingParams(max_tokens=run.get("max_completion_tokens"), temperature=run.get("temperature"),
                                top_p=run.get("top_p")),
        response_format=_response_format(run.get("response_format")),
        tools=tools or None,
        tool_choice=tool_choice,
        # truncation_strategy "auto" (the default): the oldest messages go when the thread is
        # longer than the context; "last_messages" has cut it already, and over-long is an error.
        context_fit=ContextFit(truncate=True, shift=False) if truncation.get("type", "auto") == "auto" else None,
    )


def tool_calls_json(calls: list[Any]) -> list[Json]:
    """Engine tool calls as the run's ``required_action`` lists them."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def tool_outputs_transcript(outputs: list[wire.ToolOutput]) -> list[Json]:
    return [{"role": "tool", "tool_call_id": o.tool_call_id, "content": o.output} for o in outputs]


def step_tool_calls_with_outputs(step: Json, outputs: list[wire.ToolOutput]) -> Json:
    by_id = {o.tool_call_id: o.output for o in outputs}
    calls = [
        {**call, "function": {**call["function"], "output": by_id.get(call["id"])}}
        for call in step["step_details"]["tool_calls"]
    ]
    return {**step, "status": "completed", "completed_at": now_s(),
            "step_details": {"type": "tool_calls", "tool_calls": calls}}


def text_delta_event(message_id: str, text: str) -> Json:
    return {"id": message_id, "object": "thread.message.delta",
            "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text, "annotations": []}}]}}


def tool_step_delta_event(step_id: str, calls: list[Json]) -> Json:
    deltas = [{"index": i, "id": c["id"], "type": "function",
               "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"], "output": None}}
              for i, c in enumerate(calls)]
    return {"id": step_id, "object": "thread.run.step.delta",
            "delta": {"step_details": {"type": "tool_calls", "tool_calls": deltas}}}
