"""Chunks of one generation as a ``response`` object and its typed stream events.

One :class:`ResponseBuilder` serves both modes: a streamed reply sends the events it returns,
a non-streamed one drops them and keeps :attr:`ResponseBuilder.response`, so the two can never
disagree. Output items open as content arrives (reasoning, then the message, then each function
call) and close in order.
"""

from __future__ import annotations

import time
from typing import Any

from serve_app.core.errors import ServingError
from serve_app.core.internal_types import GenerationChunk, ToolCallDelta, Usage
from serve_app.state.store import Json, new_id

# The codes OpenAI's document allows in a Response's ``error`` (those this server can meet).
RESPONSE_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt", "invalid_image",
                                  "invalid_image_format", "invalid_base64_image", "invalid_image_url",
                                  "image_too_large"})


def usage_body(usage: Usage) -> Json:
    """The Responses ``usage`` object."""
    return {
        "input_tokens": usage.prompt_tokens,
        # Cache writes are not reported by vLLM; the document requires the field.
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


class _OpenItem:
    """An output item being written: its JSON, its index and the text gathered so far."""

    __slots__ = ("item", "index", "parts")

    def __init__(self, item: Json, index: int) -> None:
        self.item = item
        self.index = index
        self.parts: list[str] = []


class ResponseBuilder:
    """Builds one response from the chunks of choice 0 of its generation."""

    def __init__(self, skeleton: Json, *, parallel_tool_calls: bool = True) -> None:
        self.response: Json = {**skeleton, "status": "in_progress", "output": []}
        self.parallel_tool_calls = parallel_tool_calls
        self._sequence = 0
        self._open: _OpenItem | None = None
        self._calls = 0
        self._finish: str | None = None
        self._usage = Usage()

    @property
    def output(self) -> list[Json]:
        return self.response["output"]

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def _snapshot(self) -> Json:
        return {**self.response, "output": [dict(item) for item in self.output]}

    def start(self) -> list[Json]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event("response.created", response=self._snapshot()),
            self._event("response.in_progress", response=self._snapshot()),
        ]

    # -- items --------------------------------------------------------------------------------

    def _open_item(self, item: Json) -> list[Json]:
        events = self._close_open()
        opened = _OpenItem(item, len(self.output))
        self.output.append(item)
        self._open = opened
        events.append(self._event("response.output_item.added", output_index=opened.index, item=dict(item)))
        if item["type"] == "message":
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=opened.index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
                )
            )
        return events

    def _close_open(self, status: str = "completed") -> list[Json]:
        opened, self._open = self._open, None
        if opened is None:
            return []
        item, index, text = opened.item, opened.index, "".join(opened.parts)
        events: list[Json] = []
        if item["type"] == "message":
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        elif item["type"] == "reasoning":
            item["content"] = [{"type": "reasoning_text", "text": text}]
            events.append(self._event("response.reasoning_text.done", item_id=item["id"], output_index=index,
                                      content_index=0, text=text))
        item["status"] = status
        events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return events

    def _text(self, kind: str, text: str) -> list[Json]:
        events: list[Json] = []
        if self._open is None or self._open.item["type"] != kind:
            if kind == "message":
                item: Json = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                              "content": []}
            else:
                item = {"id": new_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [], "content": []}
            events = self._open_item(item)
        opened = self._open
        assert opened is not None
        opened.parts.append(text)
        delta_type = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self._event(delta_type, item_id=opened.item["id"], output_index=opened.index,
                                  content_index=0, delta=text, **extra))
        return events

    def _call(self, call: ToolCallDelta) -> list[Json]:
        if self._calls and not self.parallel_tool_calls:
            return []  # parallel_tool_calls: false keeps the first call only
        self._calls += 1
        item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "call_id": call.id,
                "name": call.name, "arguments": ""}
        events = self._open_item(item)
        index = self._open.index if self._open else len(self.output) - 1
        item["arguments"] = call.arguments
        events.append(self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                  delta=call.arguments))
        events.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                  name=call.name, arguments=call.arguments))
        events += self._close_open()
        return events

    # -- the stream -----------------------------------------------------------------------

    def feed(self, chunk: GenerationChunk) -> list[Json]:
        """The events one chunk adds (only choice 0 is a response's output)."""
        if chunk.index != 0:
            return []
        events: list[Json] = []
        if chunk.reasoning:
            events += self._text("reasoning", chunk.reasoning)
        if chunk.text:
            events += self._text("message", chunk.text)
        for call in chunk.tool_calls or ():
            events += self._call(call)
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.usage is not None:
            self._usage = chunk.usage
        return events

    def finish(self) -> list[Json]:
        """Close the open item and end with ``response.completed`` (or ``.incomplete``)."""
        cut = self._finish == "length"
        if not self.output and not cut:
            self._text("message", "")  # an empty answer is still one message
        events = self._close_open("incomplete" if cut else "completed")
        self.response.update(
            status="incomplete" if cut else "completed",
            incomplete_details={"reason": "max_output_tokens"} if cut else None,
            usage=usage_body(self._usage),
            completed_at=int(time.time()),
        )
        kind = "response.incomplete" if cut else "response.completed"
        events.append(self._event(kind, response=self._snapshot()))
        return events

    def fail(self, error: ServingError) -> list[Json]:
        """An in-band ``error`` event (the SDK raises on it) and ``response.failed``."""
        events = self._close_open("incomplete")
        message = error.client_message()
        # The Response object's error codes are a fixed list: ours outside it are server_error.
        code = error.code if error.code in RESPONSE_ERROR_CODES else "server_error"
        self.response.update(status="failed", error={"code": code, "message": message})
        envelope = {"message": message, "type": error.type, "param": error.param, "code": error.code}
        events.append(self._event("error", code=error.code, message=message, param=error.param,
                                  error=envelope))
        events.append(self._event("response.failed", response=self._snapshot()))
        return events
