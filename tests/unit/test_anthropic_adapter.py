"""Golden tests of the Anthropic adapter, both directions: wire request -> internal request, and
internal chunks -> ``message`` object and stream events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serve_app.apis.anthropic import adapter
from serve_app.apis.anthropic import schemas as wire
from serve_app.core.backend import fold_chunks
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    ContextFit,
    FunctionCall,
    GenerationChunk,
    ImagePart,
    ResponseFormat,
    SamplingParams,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
)

PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def to_internal(body: dict[str, Any]) -> tuple[Any, list[str]]:
    return adapter.messages_request_to_internal(wire.MessagesRequest.model_validate(body), "m:1", "rid")


def test_a_whole_conversation_becomes_one_internal_chat() -> None:
    body = {
        "model": "claude-ish",
        "max_tokens": 64,
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather in Paris?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "They want weather.", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "timeout"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather now", "input_schema": WEATHER_SCHEMA}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "user-7"},
    }
    internal, unhonoured = to_internal(body)
    assert unhonoured == []
    assert internal.model == "m:1" and internal.request_id == "rid" and internal.kind == "chat"
    assert internal.messages == [
        ChatMessage(role="system", content="Be brief.\nUse tools."),
        ChatMessage(role="user", content=[TextPart(text="Weather in Paris?"), ImagePart(media_type="image/png", data_base64=PNG)]),
        ChatMessage(
            role="assistant",
            content="Let me check.",
            reasoning="They want weather.",
            tool_calls=[ToolCall(id="toolu_1", function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'))],
        ),
        ChatMessage(role="tool", content="18 C", tool_call_id="toolu_1"),
        ChatMessage(role="tool", content="Error: timeout", tool_call_id="toolu_2"),
        ChatMessage(role="user", content="And tomorrow?"),
    ]
    assert internal.tools == [ToolSpec(name="get_weather", description="Weather now", parameters=WEATHER_SCHEMA)]
    assert internal.tool_choice == "get_weather"
    assert internal.sampling == SamplingParams(max_tokens=64, temperature=0.2, top_p=0.9, top_k=40, stop=["\n\nHuman:"])
    assert internal.user == "user-7"
    assert internal.context_fit == ContextFit(truncate=False, shift=True)
    assert internal.think is None and internal.response_format == ResponseFormat()


@pytest.mark.parametrize(
    ("choice", "expected"),
    [(None, "auto"), ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
     ({"type": "tool", "name": "t"}, "t")],
)
def test_tool_choice(choice: dict[str, Any] | None, expected: str) -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    assert to_internal(body)[0].tool_choice == expected


@pytest.mark.parametrize(
    ("thinking", "think", "unhonoured"),
    [({"type": "enabled", "budget_tokens": 2048}, True, ["thinking.budget_tokens"]),
     ({"type": "disabled"}, False, []), ({"type": "adaptive"}, None, [])],
)
def test_thinking(thinking: dict[str, Any], think: bool | None, unhonoured: list[str]) -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}], "thinking": thinking}
    internal, reported = to_internal(body)
    assert internal.think is think and reported == unhonoured


def test_structured_output_and_unhonoured_fields() -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}, "effort": "low"},
            "service_tier": "auto", "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}
    internal, unhonoured = to_internal(body)
    assert internal.response_format == ResponseFormat(type="json_schema", json_schema=WEATHER_SCHEMA)
    assert unhonoured == ["service_tier", "tool_choice.disable_parallel_tool_use", "output_config.effort"]


def test_count_tokens_request_keeps_the_prompt_shaping_fields() -> None:
    body = wire.CountTokensRequest.model_validate({
        "model": "x", "system": "sys", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}}],
    })
    internal, _ = adapter.count_request_to_internal(body, "m:1", "rid")
    assert [m.role for m in internal.messages] == ["system", "user"]
    assert internal.tools == [ToolSpec(name="t", parameters={"type": "object"})]
    assert internal.sampling == SamplingParams()


@pytest.mark.parametrize(
    ("message", "error", "param"),
    [
        ({"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
         Unsupported, "messages[0].content[0].source.type"),
        ({"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "@@"}}]},
         InvalidRequest, "messages[0].content[0].source.data"),
        ({"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]},
         Unsupported, "messages[0].content[0]"),
        ({"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]},
         InvalidRequest, "messages[0].content[0].type"),
        ({"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]},
         InvalidRequest, "messages[0].content[0].type"),
    ],
)
def test_blocks_that_cannot_be_served_are_refused(message: dict[str, Any], error: type[Exception], param: str) -> None:
    with pytest.raises(error) as caught:
        to_internal({"model": "x", "max_tokens": 1, "messages": [message, {"role": "user", "content": "x"}]})
    assert caught.value.param == param  # type: ignore[attr-defined]


def test_prefill_is_refused_as_anthropic_does_for_models_without_it() -> None:
    body = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The"}]}
    with pytest.raises(Unsupported, match="Prefill"):
        to_internal(body)
    # count_tokens only measures: a trailing assistant turn is counted, not refused.
    count_body = wire.CountTokensRequest.model_validate({k: v for k, v in body.items() if k != "max_tokens"})
    counted, _ = adapter.count_request_to_internal(count_body, "m", "r")
    assert [m.role for m in counted.messages] == ["user", "assistant"]


def test_server_tools_and_unknown_tool_choice_are_refused() -> None:
    base = {"model": "x", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(Unsupported, match="web_search_20250305"):
        to_internal({**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    with pytest.raises(InvalidRequest, match="input_schema"):
        to_internal({**base, "tools": [{"name": "t"}]})
    with pytest.raises(InvalidRequest, match="not in 'tools'"):
        to_internal({**base, "tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "u"}})
    with pytest.raises(InvalidRequest, match="needs 'tools'"):
        to_internal({**base, "tool_choice": {"type": "any"}})


# -- replies --------------------------------------------------------------------------------

CALL = ToolCallDelta(0, "call_1", "get_weather", '{"city": "Paris"}')


def chunks_with_everything() -> list[GenerationChunk]:
    return [
        GenerationChunk(reasoning="Hmm ", prompt_tokens=12),
        GenerationChunk(reasoning="ok."),
        GenerationChunk(text="Checking"),
        GenerationChunk(text=" now.", tool_calls=[CALL], finish_reason="tool_calls", usage=Usage(12, 9, 8)),
    ]


def test_message_body_golden() -> None:
    body = adapter.message_body(fold_chunks(chunks_with_everything()), "claude-ish", "msg_1")
    assert body == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-ish",
        "content": [
            {"type": "thinking", "thinking": "Hmm ok.", "signature": ""},
            {"type": "text", "text": "Checking now."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 8},
    }


def test_stream_events_golden() -> None:
    events = adapter.MessageEvents("claude-ish", "msg_1")
    produced = [e for c in chunks_with_everything() for e in events.chunk(c)] + events.closing()
    usage = {"input_tokens": 4, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 8}
    assert produced == [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-ish", "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 12, "output_tokens": 0}}},
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Hmm "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "ok."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": ""}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": " now."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": usage},
        {"type": "message_stop"},
    ]


def fold_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message a client builds from the events (as Anthropic documents the stream)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for event in events:
        kind = event["type"]
        if kind == "message_start":
            message = json.loads(json.dumps(event["message"]))
        elif kind == "content_block_start":
            assert event["index"] == len(message["content"])
            message["content"].append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and event["index"] in partial:
            message["content"][event["index"]]["input"] = json.loads(partial[event["index"]])
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


@pytest.mark.parametrize(
    "chunks",
    [
        chunks_with_everything(),
        [GenerationChunk(text="a", prompt_tokens=3), GenerationChunk(text="b", finish_reason="length", usage=Usage(3, 2))],
        [GenerationChunk(text="a b", prompt_tokens=3, finish_reason="stop", stop_sequence="c", usage=Usage(3, 2))],
        [GenerationChunk(prompt_tokens=3, finish_reason="stop", usage=Usage(3, 0))],  # said nothing
    ],
    ids=["everything", "length", "stop-sequence", "empty"],
)
def test_the_fold_of_the_events_is_the_message_body(chunks: list[GenerationChunk]) -> None:
    events = adapter.MessageEvents("m", "msg_1")
    streamed = [e for c in chunks for e in events.chunk(c)] + events.closing()
    assert fold_events(streamed) == adapter.message_body(fold_chunks(chunks), "m", "msg_1")


@pytest.mark.parametrize(
    ("finish", "sequence", "tools", "expected"),
    [
        ("stop", None, False, ("end_turn", None)),
        ("stop", "END", False, ("stop_sequence", "END")),
        ("length", "END", True, ("max_tokens", None)),
        ("tool_calls", None, True, ("tool_use", None)),
        (None, None, False, ("end_turn", None)),
    ],
)
def test_stop_fields(finish: str | None, sequence: str | None, tools: bool, expected: tuple[str, str | None]) -> None:
    fields = adapter.stop_fields(finish, sequence, tools)
    assert (fields["stop_reason"], fields["stop_sequence"]) == expected


def test_tool_input_is_always_an_object() -> None:
    assert adapter.tool_input('{"a": 1}') == {"a": 1}
    assert adapter.tool_input("") == {}
    assert adapter.tool_input("[1]") == {"value": [1]}
    assert adapter.tool_input("not json") == {}
