"""Test data for schemathesis runs (loaded through ``SCHEMATHESIS_HOOKS``).

Schemathesis makes bodies from the document alone, so a ``model`` is a random string and
almost every generation route would only ever answer 404. These hooks give each generated
case a model that exists and can serve what the body asks for (images, embeddings), keep
output-token counts within a model's context, and make the relations JSON Schema cannot state
hold (a named ``tool_choice`` names one of ``tools``; an Anthropic conversation ends on a user
turn and tool results are in user turns).
They touch nothing else: a schema-violating (negative) case stays as invalid as it was made.

``SCHEMATHESIS_MODELS`` (JSON: ``{"generate": ..., "vision": ..., "embed": ...}``) names the
models of the server under test.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

MODELS: dict[str, str] = json.loads(os.environ.get("SCHEMATHESIS_MODELS", "{}"))
EMBEDDING_PATHS = {"/v1/embeddings", "/api/embed", "/api/embeddings"}


def _has_images(body: dict[str, Any]) -> bool:
    text = json.dumps(body)
    return '"images"' in text or "image_url" in text or '"image"' in text or "input_image" in text


def _model_for(path: str, body: dict[str, Any]) -> str | None:
    if path in EMBEDDING_PATHS:
        return MODELS.get("embed")
    if _has_images(body):
        return MODELS.get("vision") or MODELS.get("generate")
    return MODELS.get("generate")


def _tool_name(tool: Any) -> str | None:
    """A function tool's name: nested in "function" (Chat Completions) or at the top (the
    Responses API, Anthropic's custom tools)."""
    if not isinstance(tool, dict) or tool.get("type") not in (None, "function", "custom"):
        return None
    name = tool["function"].get("name") if isinstance(tool.get("function"), dict) else tool.get("name")
    return name if isinstance(name, str) else None


def _name_a_listed_tool(body: dict[str, Any]) -> None:
    choice, tools = body.get("tool_choice"), body.get("tools")
    if not isinstance(choice, dict) or not isinstance(tools, list):
        return
    name = next((n for n in map(_tool_name, tools) if n is not None), None)
    if name is None:
        return
    if isinstance(choice.get("function"), dict) and "name" in choice["function"]:
        choice["function"]["name"] = name
    elif "name" in choice:
        choice["name"] = name


# Output-token fields: how many a model can give depends on its context (and a 0 or negative
# one is a schema violation left as it is).
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict")
MAX_TEST_TOKENS = 16


def _fit_the_context(body: dict[str, Any]) -> None:
    for holder in (body, body.get("options") if isinstance(body.get("options"), dict) else {}):
        for field in TOKEN_FIELDS:
            value = holder.get(field)
            # JSON Schema's integers include 1e12 written as a float.
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_TEST_TOKENS:
                holder[field] = MAX_TEST_TOKENS
        num_ctx = holder.get("num_ctx")
        if isinstance(num_ctx, int) and not isinstance(num_ctx, bool) and num_ctx > 0:
            holder["num_ctx"] = max(num_ctx, 1024)  # room for any generated prompt


# The blocks each role's turn may hold in Anthropic's Messages API.
ROLE_BLOCKS = {
    "user": {"text", "image", "tool_result"},
    "assistant": {"text", "thinking", "redacted_thinking", "tool_use"},
}


def _end_on_a_user_turn(body: dict[str, Any]) -> None:
    """Anthropic's Messages API: no prefill (the last turn is the user's) and each block in a
    turn of the role that may hold it; the document cannot say either."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return
    for message in messages:
        content = message.get("content")
        allowed = ROLE_BLOCKS.get(str(message.get("role")))
        if allowed is not None and isinstance(content, list):
            kept = [b for b in content if not isinstance(b, dict) or str(b.get("type")) in allowed]
            message["content"] = kept or "..."
    if messages and messages[-1].get("role") == "assistant":
        messages.append({"role": "user", "content": "go on"})


MAX_IMAGES = int(os.environ.get("SCHEMATHESIS_MAX_IMAGES", "16"))


def _within_the_image_limit(body: dict[str, Any]) -> None:
    """The image limit is per request; the document can only bound each message's list."""
    budget = MAX_IMAGES
    holders = [body, *(m for m in body.get("messages", []) if isinstance(m, dict))] if isinstance(body.get("messages", []), list) else [body]
    for holder in holders:
        images = holder.get("images")
        if isinstance(images, list):
            holder["images"] = images[: max(budget, 0)]
            budget -= len(holder["images"])


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    """Point the case at a model that exists and fits the body."""
    body = case.body
    if not isinstance(body, dict) or not MODELS:
        return case
    if isinstance(body.get("model"), str):
        model = _model_for(ctx.operation.path, body)
        if model is not None:
            body["model"] = model
    _name_a_listed_tool(body)
    _fit_the_context(body)
    _within_the_image_limit(body)
    if ctx.operation.path.startswith("/v1/messages"):
        _end_on_a_user_turn(body)
    return case
