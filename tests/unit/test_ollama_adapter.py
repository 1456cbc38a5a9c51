"""Golden tests of the Ollama adapter, both directions (pure functions, fixed inputs)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest

from serve_app.apis.ollama import adapter
from serve_app.apis.ollama import schemas as wire
from serve_app.core.errors import InvalidRequest
from serve_app.core.internal_types import (
    ChoiceResult,
    GenerationChunk,
    GenerationResult,
    ModelCard,
    ModelStatus,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0fake").decode()
CARD = ModelCard(
    name="smollm2:135m", context_length=64, capabilities=["completion", "tools"], family="llama",
    parameter_size="135M", quantization_level="F32", created=1_700_000_000,
)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "1970-01-01T00:00:00.000000000Z"),
        (1_700_000_000_123_456_789, "2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_000_000_001, "2023-11-14T22:13:20.000000001Z"),
    ],
)
def test_rfc3339_nano(ns: int, text: str) -> None:
    assert adapter.rfc3339_nano(ns) == text


def test_rfc3339_nano_now() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", adapter.rfc3339_nano())


SAMPLING_DEFAULTS = {
    "max_tokens": None, "temperature": None, "top_p": None, "top_k": None, "min_p": None, "seed": None, "stop": [],
    "presence_penalty": None, "frequency_penalty": None, "repetition_penalty": None, "logit_bias": None, "n": 1,
    "logprobs": False, "top_logprobs": None, "ignore_eos": False,
}


@pytest.mark.parametrize(
    ("options", "sampling", "num_ctx", "unhonoured"),
    [
        (None, {}, None, []),
        ({}, {}, None, []),
        (
            {"num_predict": 5, "temperature": 0.3, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "seed": 7, "stop": ["\n"],
             "repeat_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5, "num_ctx": 32},
            {"max_tokens": 5, "temperature": 0.3, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "seed": 7, "stop": ["\n"],
             "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5},
            32, [],
        ),
        ({"num_predict": -1, "stop": "x"}, {"stop": ["x"]}, None, []),
        ({"num_predict": -2}, {}, None, []),
        ({"mirostat": 2, "num_gpu": 1, "temperature": 0, "my_knob": 1}, {"temperature": 0.0}, None,
         ["options.mirostat", "options.my_knob", "options.num_gpu"]),
    ],
)
def test_options_to_sampling(options: dict[str, Any] | None, sampling: dict[str, Any], num_ctx: int | None, unhonoured: list[str]) -> None:
    parsed = None if options is None else wire.Options.model_validate(options)
    got, got_ctx, got_unhonoured = adapter.options_to_sampling(parsed)
    assert got.model_dump() == {**SAMPLING_DEFAULTS, **sampling}
    assert got_ctx == num_ctx
    assert got_unhonoured == unhonoured


@pytest.mark.parametrize("num_predict", [0, -3])
def test_bad_num_predict(num_predict: int) -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter.options_to_sampling(wire.Options(num_predict=num_predict))
    assert info.value.param == "options.num_predict"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (None, {"type": "text", "json_schema": None}),
        ("", {"type": "text", "json_schema": None}),
        ("json", {"type": "json_object", "json_schema": None}),
        ({"type": "object"}, {"type": "json_schema", "json_schema": {"type": "object"}}),
    ],
)
def test_format_to_internal(fmt: Any, expected: dict[str, Any]) -> None:
    assert adapter.format_to_internal(fmt).model_dump() == expected


def test_generate_to_internal_chat_golden() -> None:
    body = wire.GenerateRequest.model_validate(
        {"model": "smollm2", "prompt": "why", "system": "be brief", "images": [PNG], "think": True, "format": "json",
         "options": {"num_predict": 3, "num_thread": 4}, "keep_alive": "5m", "template": "{{ .Prompt }}",
         "context": [1, 2], "logprobs": True, "top_logprobs": 2, "extra_field": 1}
    )
    request, unhonoured = adapter.generate_to_internal(body, "smollm2:135m", "r1")
    dumped = request.model_dump()
    assert dumped["kind"] == "chat" and dumped["model"] == "smollm2:135m" and dumped["request_id"] == "r1"
    assert dumped["messages"] == [
        {"role": "system", "content": "be brief", "name": None, "tool_calls": None, "tool_call_id": None, "reasoning": None},
        {"role": "user", "content": [{"type": "image", "media_type": "image/png", "data_base64": PNG}, {"type": "text", "text": "why"}],
         "name": None, "tool_calls": None, "tool_call_id": None, "reasoning": None},
    ]
    assert dumped["sampling"] == {**SAMPLING_DEFAULTS, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    assert dumped["response_format"] == {"type": "json_object", "json_schema": None}
    assert dumped["think"] is True
    assert unhonoured == ["options.num_thread", "extra_field", "template", "context"]
    assert dumped["keep_alive_s"] == 300.0


@pytest.mark.parametrize(
    ("body", "kind", "prompt", "suffix", "raw"),
    [
        ({"prompt": "a b", "raw": True}, "completion", "a b", None, True),
        ({"prompt": "def f(", "suffix": "):"}, "completion", "def f(", "):", False),
        ({"prompt": "a", "raw": True, "suffix": "z"}, "completion", "a", "z", True),
    ],
)
def test_generate_to_internal_completion(body: dict[str, Any], kind: str, prompt: str, suffix: str | None, raw: bool) -> None:
    request, unhonoured = adapter.generate_to_internal(wire.GenerateRequest.model_validate({"model": "m", **body}), "m", "r")
    assert (request.kind, request.prompt, request.suffix, request.raw, request.messages) == (kind, prompt, suffix, raw, [])
    assert unhonoured == []


def test_generate_raw_with_images_refused() -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter.generate_to_internal(wire.GenerateRequest(model="m", prompt="a", raw=True, images=[PNG]), "m", "r")
    assert info.value.param == "images"


def test_chat_to_internal_golden() -> None:
    body = wire.ChatRequest.model_validate({
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather?", "images": [JPEG]},
            {"role": "assistant", "content": "", "thinking": "hmm",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
        "format": {"type": "object"},
    })
    request, unhonoured = adapter.chat_to_internal(body, "m", "r")
    assert [m.model_dump() for m in request.messages] == [
        {"role": "user", "content": [{"type": "image", "media_type": "image/jpeg", "data_base64": JPEG}, {"type": "text", "text": "weather?"}],
         "name": None, "tool_calls": None, "tool_call_id": None, "reasoning": None},
        {"role": "assistant", "content": "", "name": None, "tool_call_id": None, "reasoning": "hmm",
         "tool_calls": [{"id": "call_1_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "name": "get_weather", "tool_calls": None, "tool_call_id": None, "reasoning": None},
    ]
    assert [t.model_dump() for t in request.tools or []] == [{"name": "get_weather", "description": "d", "parameters": {"type": "object"}}]
    assert request.response_format.model_dump() == {"type": "json_schema", "json_schema": {"type": "object"}}
    assert request.think is None and request.tool_choice == "auto"
    assert unhonoured == []


def test_open_webui_tool_turn_keeps_the_call_ids() -> None:
    """Open WebUI answers a call with OpenAI's tool_call_id (no tool_name) and sends call ids."""
    body = wire.ChatRequest.model_validate({
        "model": "m",
        "messages": [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"index": 0, "id": "call_abc", "function": {"name": "get_current_timestamp", "arguments": {}}}]},
            {"role": "tool", "content": '{"current_timestamp": 1}', "tool_call_id": "call_abc"},
        ],
    })
    request, unhonoured = adapter.chat_to_internal(body, "m", "r")
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.tool_calls is not None and assistant.tool_calls[0].id == "call_abc"
    assert tool.tool_call_id == "call_abc" and tool.name is None
    assert unhonoured == []


def test_image_part() -> None:
    assert adapter.image_part(PNG, "p").media_type == "image/png"
    assert adapter.image_part(JPEG, "p").media_type == "image/jpeg"
    assert adapter.image_part(base64.b64encode(b"GIF89a").decode(), "p").media_type == "image/gif"
    with pytest.raises(InvalidRequest) as info:
        adapter.image_part("not base64!", "images[0]")
    assert info.value.param == "images[0]"


# -- responses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "wire_args"),
    [('{"city":"Paris"}', {"city": "Paris"}), ("", {}), ("[1,2]", {"value": [1, 2]}), ("not json", {"_raw": "not json"})],
)
def test_tool_calls_wire(arguments: str, wire_args: dict[str, Any]) -> None:
    assert adapter.tool_calls_wire([ToolCallDelta(0, "call_x", "f", arguments)]) == [
        {"function": {"index": 0, "name": "f", "arguments": wire_args}}
    ]


LP = TokenLogprob("a", -0.5, [97], [TokenLogprob("a", -0.5, [97]), TokenLogprob("b", -1.5, [98])])
LP_WIRE = {"token": "a", "logprob": -0.5, "bytes": [97],
           "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5, "bytes": [98]}]}


@pytest.mark.parametrize(
    ("chunk", "is_chat", "fields"),
    [
        (GenerationChunk(0, text="tok0 "), True, {"message": {"role": "assistant", "content": "tok0 "}}),
        (GenerationChunk(0, text="tok0 "), False, {"response": "tok0 "}),
        (GenerationChunk(0, reasoning="hm"), True, {"message": {"role": "assistant", "content": "", "thinking": "hm"}}),
        (GenerationChunk(0, reasoning="hm"), False, {"response": "", "thinking": "hm"}),
        (GenerationChunk(0, tool_calls=[ToolCallDelta(0, "c", "f", '{"a":1}')]), True,
         {"message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}}]}}),
        (GenerationChunk(0, text="a", logprobs=[LP]), False, {"response": "a", "logprobs": [LP_WIRE]}),
    ],
)
def test_chunk_fields(chunk: GenerationChunk, is_chat: bool, fields: dict[str, Any]) -> None:
    assert adapter.chunk_fields(chunk, is_chat) == fields


def test_result_fields() -> None:
    result = GenerationResult([ChoiceResult(0, text="ab", reasoning="r", logprobs=[LP])], Usage(1, 2))
    assert adapter.result_fields(result, True) == {
        "message": {"role": "assistant", "content": "ab", "thinking": "r"}, "logprobs": [LP_WIRE]
    }
    assert adapter.result_fields(GenerationResult([], Usage()), False) == {"response": ""}


@pytest.mark.parametrize(("finish", "reason"), [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), (None, "stop")])
def test_done_reason(finish: str | None, reason: str) -> None:
    assert adapter.done_reason(finish) == reason


def test_timings() -> None:
    timings = adapter.Timings()
    timings.mark_token()
    fields = timings.final_fields(3, 8)
    assert list(fields) == ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"]
    assert fields["prompt_eval_count"] == 3 and fields["eval_count"] == 8 and fields["load_duration"] == 0
    assert all(fields[k] >= 1 for k in ("total_duration", "prompt_eval_duration", "eval_duration"))
    assert fields["total_duration"] >= fields["prompt_eval_duration"]


@pytest.mark.parametrize(
    ("is_chat", "unload", "expected"),
    [
        (True, False, {"model": "m", "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"}),
        (False, True, {"model": "m", "response": "", "done": True, "done_reason": "unload"}),
    ],
)
def test_load_reply(is_chat: bool, unload: bool, expected: dict[str, Any]) -> None:
    reply = adapter.load_reply("m", is_chat, unload)
    assert reply.pop("created_at").endswith("Z")
    assert reply == expected


DETAILS = {"parent_model": "", "format": "safetensors", "family": "llama", "families": ["llama"],
           "parameter_size": "135M", "quantization_level": "F32"}
DIGEST = "5d3dfca5f3092cc44b1d2873ea27e916f4f67c82ea52d575a39e727f7f2326b6"


def test_tags_entry_golden() -> None:
    assert adapter.tags_entry(ModelStatus(card=CARD)) == {
        "name": "smollm2:135m", "model": "smollm2:135m", "modified_at": "2023-11-14T22:13:20.000000000Z", "size": 0,
        "digest": DIGEST, "details": DETAILS, "state": "ready",
    }


def test_ps_entry_golden() -> None:
    assert adapter.ps_entry(ModelStatus(card=CARD, replicas=3)) == {
        "name": "smollm2:135m", "model": "smollm2:135m", "size": 0, "digest": DIGEST, "details": DETAILS,
        "expires_at": "2318-01-01T00:00:00.000000000Z", "size_vram": 0, "context_length": 64, "replicas": 3,
    }


def test_tags_and_ps_show_the_files_size_and_digest() -> None:
    card = CARD.model_copy(update={"size_bytes": 538_090_408, "size_vram_bytes": 538_090_408, "digest": "ab" * 32})
    tags = adapter.tags_entry(ModelStatus(card=card))
    ps = adapter.ps_entry(ModelStatus(card=card, replicas=2))
    assert (tags["size"], tags["digest"]) == (538_090_408, "ab" * 32)
    assert (ps["size"], ps["size_vram"], ps["digest"]) == (538_090_408, 538_090_408, "ab" * 32)


def test_show_body_golden() -> None:
    assert adapter.show_body(CARD) == {
        "license": "",
        "modelfile": "# Served by the LLM serving cluster; models are managed in config.yaml.\nFROM smollm2:135m\n",
        "parameters": "",
        "template": "",
        "details": DETAILS,
        "model_info": {"general.architecture": "llama", "llama.context_length": 64},
        "capabilities": ["completion", "tools"],
        "modified_at": "2023-11-14T22:13:20.000000000Z",
    }
    embed = ModelCard(name="e:1", kind="embed", embedding_dimensions=384, context_length=256, created=0)
    assert adapter.show_body(embed)["model_info"] == {
        "general.architecture": "unknown", "unknown.context_length": 256, "unknown.embedding_length": 384
    }
    assert adapter.details(embed)["families"] is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), ("0", 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0),
     ("1.5s", 1.5), ("-1", -1.0), ("-1m", -60.0), ("250ms", 0.25), (-1, -1.0), ("", None)],
)
def test_keep_alive_is_seconds_or_a_go_duration(value: object, seconds: float | None) -> None:
    assert adapter.keep_alive_seconds(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "1x", True])
def test_a_bad_keep_alive_is_a_400_naming_it(value: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        adapter.keep_alive_seconds(value)  # type: ignore[arg-type]
    assert info.value.param == "keep_alive"
