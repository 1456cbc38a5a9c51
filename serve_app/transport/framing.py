"""Pure wire framing for streamed replies: SSE for OpenAI, NDJSON for Ollama."""

from __future__ import annotations

import json
from typing import Any

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"

# What a route that may stream says of its 200 in the OpenAPI document (beside its JSON body).
SSE_RESPONSE_DOC = {200: {"description": "JSON, or an event stream when `stream` is true.",
                          "content": {SSE_MEDIA_TYPE: {}}}}
NDJSON_RESPONSE_DOC = {200: {"description": "JSON, or JSON lines when `stream` is true (the default).",
                             "content": {NDJSON_MEDIA_TYPE: {}}}}
SSE_DONE = b"data: [DONE]\n\n"


def to_json(obj: Any) -> str:
    """Compact JSON, UTF-8 kept as is (both OpenAI and Ollama send it this way)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def sse_frame(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON: ``data: <json>\\n\\n``."""
    return f"data: {to_json(obj)}\n\n".encode()


def sse_event_frame(event_type: str, obj: Any) -> bytes:
    """A named server-sent event (the Responses API's typed events): ``event:`` then ``data:``."""
    return f"event: {event_type}\ndata: {to_json(obj)}\n\n".encode()


def ndjson_line(obj: Any) -> bytes:
    """One NDJSON line carrying ``obj``."""
    return f"{to_json(obj)}\n".encode()
