"""Golden tests of the OpenAI adapter, both directions (pure functions, fixed inputs)."""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

import pytest

from serve_app.apis.openai import adapter
from serve_app.apis.openai import schemas as wire
from serve_app.core.errors import InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChoiceResult,
    EmbeddingResult,
    GenerationChunk,
    GenerationResult,
    ModelCard,
    ModelStatus,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from serve_app.core.request_limits import RequestLimits

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def masked(body: Any) -> Any:
    """``body`` with generated ids and timestamps replaced by placeholders."""
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            if key == "id" and isinstance(value, str) and re.fullmatch(r"(chatcmpl|cmpl)-[0-9a-f]{32}", value):
                value = value.split("-")[0] + "-*"
            elif key == "created":
                assert isinstance(value, int) and value > 1_600_000_000
                value = "*"
            out[key] = masked(value)
        return out
    if isinstance(body, list):
        return [masked(v) for v in body]
    return body


# -- requests -----------------------------------------------------------------------------------

CHAT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    (
        "minimal",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        {
            "request_id": "r1", "model": "smollm2:135m", "kind": "chat",
            "messages": [{"role": "user", "content": "hi", "name": None, "tool_calls": None, "tool_call_id": None, "reasoning": None}],
            "prompt": None, "suffix": None, "echo": False, "raw": False,
            "sampling": {"max_tokens": None, "temperature": None, "top_p": None, "top_k": None, "min_p": None, "seed": None,
                         "stop": [], "presence_penalty": None, "frequency_penalty": None, "repetition_penalty": None,
                         "logit_bias": None, "n": 1, "logprobs": False, "top_logprobs": None, "ignore_eos": False},
            "response_format": {"type": "text", "json_schema": None}, "tools": None, "tool_choice": "auto",
            "think": None, "context_limit": None, "include_usage": True, "user": None,
        },
        [],
    ),
    (
        "sampling",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "max_completion_tokens": 7,
         "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "x", "presence_penalty": 1, "frequency_penalty": -1,
         "n": 2, "logit_bias": {"42": -100}, "logprobs": True, "top_logprobs": 3, "user": "u1",
         "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1, "stream": True, "stream_options": {"include_usage": False},
         "store": True, "metadata": {"a": "b"}, "parallel_tool_calls": False},
        {"sampling": {"max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.1, "seed": 3,
                      "stop": ["x"], "presence_penalty": 1.0, "frequency_penalty": -1.0, "repetition_penalty": 1.1,
                      "logit_bias": {42: -100.0}, "n": 2, "logprobs": True, "top_logprobs": 3, "ignore_eos": False},
         "include_usage": False, "user": "u1"},
        ["store", "metadata", "parallel_tool_calls"],
    ),
    (
        "messages",
        {"model": "m", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}]},
            {"role": "assistant", "content": None, "reasoning_content": "hmm",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
        ]},
        {"messages": [
            {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
             "name": None, "tool_calls": None, "tool_call_id": None, "reasoning": None},
            {"role": "user", "content": [{"type": "text", "text": "see"}, {"type": "image", "media_type": "image/png", "data_base64": PNG}],
             "name": "ann", "tool_calls": None, "tool_call_id": None, "reasoning": None},
            {"role": "assistant", "content": None, "name": None, "tool_call_id": None, "reasoning": "hmm",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "content": "42", "name": None, "tool_calls": None, "tool_call_id": "c1", "reasoning": None},
            {"role": "assistant", "content": [{"type": "text", "text": "no"}], "name": None, "tool_calls": None,
             "tool_call_id": None, "reasoning": None},
        ]},
        [],
    ),
    (
        "tools-and-format",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}],
         "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}],
         "tool_choice": {"type": "function", "function": {"name": "f"}},
         "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "array"}}}},
        {"tools": [{"name": "f", "description": "d", "parameters": {"type": "object"}}], "tool_choice": "f",
         "response_format": {"type": "json_schema", "json_schema": {"type": "array"}}},
        [],
    ),
    (
        "json-object-and-required",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"},
         "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {"tools": [{"name": "f", "description": None, "parameters": None}], "tool_choice": "required",
         "response_format": {"type": "json_object", "json_schema": None}},
        [],
    ),
    (
        "schema-less-json-schema",
        {"model": "m", "messages": [{"role": "user", "content": "hi"}],
         "response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
        {"response_format": {"type": "json_schema", "json_schema": {"type": "object"}}},
        [],
    ),
]


@pytest.mark.parametrize(("name", "body", "expected", "unhonoured"), CHAT_CASES, ids=[c[0] for c in CHAT_CASES])
def test_chat_request_to_internal(name: str, body: dict[str, Any], expected: dict[str, Any], unhonoured: list[str]) -> None:
    request, not_honoured = adapter.chat_request_to_internal(
        wire.ChatCompletionRequest.model_validate(body), "smollm2:135m" if name == "minimal" else "m", "r1"
    )
    dumped = request.model_dump()
    assert {k: dumped[k] for k in expected} == expected
    assert not_honoured == unhonoured


def test_completion_prompt_batch_over_server_limit() -> None:
    body = wire.CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b", "c"]})
    with pytest.raises(InvalidRequest) as info:
        adapter.completion_requests_to_internal(body, "m", "r", RequestLimits(max_completion_prompts=2))
    assert info.value.param == "prompt"


@pytest.mark.parametrize(
    ("url", "error", "param"),
    [
        ("https://example.com/cat.png", Unsupported, "p"),
        ("data:text/plain;base64,aGk=", Unsupported, "p"),
        ("data:image/png;base64,@@@", InvalidRequest, "p"),
    ],
)
def test_image_from_url_refusals(url: str, error: type, param: str) -> None:
    with pytest.raises(error) as info:
        adapter.image_from_url(url, param)
    assert info.value.param == param and info.value.status == 400


def test_image_from_url() -> None:
    part = adapter.image_from_url(f"data:image/jpeg;base64,{PNG}", "p")
    assert (part.media_type, part.data_base64) == ("image/jpeg", PNG)


def test_logit_bias_keys_must_be_token_ids() -> None:
    body = wire.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"hello": 1}}
    )
    with pytest.raises(InvalidRequest) as info:
        adapter.chat_request_to_internal(body, "m", "r")
    assert info.value.param == "logit_bias"


@pytest.mark.parametrize(
    ("body", "prompts", "ids", "sampling"),
    [
        ({"prompt": "a"}, ["a"], ["r"], {"max_tokens": 16, "n": 1, "logprobs": False, "top_logprobs": None}),
        ({"prompt": ["a", "b"], "n": 2, "max_tokens": 3}, ["a", "b"], ["r", "r-1"], {"max_tokens": 3, "n": 2, "logprobs": False, "top_logprobs": None}),
        ({"prompt": [1, 2, 3], "logprobs": 0}, [[1, 2, 3]], ["r"], {"max_tokens": 16, "n": 1, "logprobs": True, "top_logprobs": 0}),
        ({"prompt": [[1], [2, 3]], "logprobs": 2}, [[1], [2, 3]], ["r", "r-1"], {"max_tokens": 16, "n": 1, "logprobs": True, "top_logprobs": 2}),
    ],
)
def test_completion_requests_to_internal(body: dict[str, Any], prompts: list[Any], ids: list[str], sampling: dict[str, Any]) -> None:
    requests, unhonoured = adapter.completion_requests_to_internal(
        wire.CompletionRequest.model_validate({"model": "m", "suffix": "s", **body}), "m", "r", RequestLimits()
    )
    assert [r.prompt for r in requests] == prompts
    assert [r.request_id for r in requests] == ids
    assert all(r.kind == "completion" and r.suffix == "s" for r in requests)
    assert all({k: r.sampling.model_dump()[k] for k in sampling} == sampling for r in requests)
    assert unhonoured == []


def test_completion_best_of_is_reported_and_echo_needs_text() -> None:
    _, unhonoured = adapter.completion_requests_to_internal(
        wire.CompletionRequest.model_validate({"model": "m", "prompt": "a", "best_of": 3}), "m", "r", RequestLimits()
    )
    assert unhonoured == ["best_of"]
    _, unhonoured = adapter.completion_requests_to_internal(
        wire.CompletionRequest.model_validate({"model": "m", "prompt": "a", "best_of": 1}), "m", "r", RequestLimits()
    )
    assert unhonoured == []
    with pytest.raises(Unsupported) as info:
        adapter.completion_requests_to_internal(
            wire.CompletionRequest.model_validate({"model": "m", "prompt": [1, 2], "echo": True}), "m", "r", RequestLimits()
        )
    assert info.value.param == "echo"


@pytest.mark.parametrize(
    ("value", "inputs"),
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_embedding_inputs(value: Any, inputs: list[Any]) -> None:
    assert adapter.embedding_inputs(value) == inputs


# -- responses ----------------------------------------------------------------------------------

LP = TokenLogprob("tok0 ", -0.25, [116, 111, 107, 48, 32], [TokenLogprob("tok0 ", -0.25, [116]), TokenLogprob("alt ", -1.75, None)])
LP_WIRE = {
    "token": "tok0 ", "logprob": -0.25, "bytes": [116, 111, 107, 48, 32],
    "top_logprobs": [{"token": "tok0 ", "logprob": -0.25, "bytes": [116]}, {"token": "alt ", "logprob": -1.75, "bytes": None}],
}
CHUNK_HEAD = {"id": "chatcmpl-*", "object": "chat.completion.chunk", "created": "*", "model": "gpt-4o-mini", "system_fingerprint": adapter.system_fingerprint("gpt-4o-mini")}


def test_chat_chunks_golden() -> None:
    chunks = adapter.ChatChunkAdapter("gpt-4o-mini", include_usage=True)
    stream = [
        GenerationChunk(0, text="tok0 ", logprobs=[LP]),
        GenerationChunk(1, reasoning="think "),
        GenerationChunk(0, text="tok1 "),
        GenerationChunk(0, finish_reason="length", usage=Usage(3, 2)),
        GenerationChunk(1, tool_calls=[ToolCallDelta(0, "call_1", "f", '{"a":1}')], finish_reason="tool_calls", usage=Usage(3, 2)),
    ]
    got = [masked(chunks.chunk(c)) for c in stream] + [masked(chunks.usage_chunk())]
    assert got == [
        {**CHUNK_HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "tok0 "}, "logprobs": {"content": [LP_WIRE], "refusal": None}, "finish_reason": None}], "usage": None},
        {**CHUNK_HEAD, "choices": [{"index": 1, "delta": {"role": "assistant", "content": "", "reasoning_content": "think "}, "logprobs": None, "finish_reason": None}], "usage": None},
        {**CHUNK_HEAD, "choices": [{"index": 0, "delta": {"content": "tok1 "}, "logprobs": None, "finish_reason": None}], "usage": None},
        {**CHUNK_HEAD, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}], "usage": None},
        {**CHUNK_HEAD, "choices": [{"index": 1, "delta": {"tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}, "index": 0}]}, "logprobs": None, "finish_reason": "tool_calls"}], "usage": None},
        {**CHUNK_HEAD, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}}},
    ]
    # Every chunk of a stream shares its id and created.
    assert len({chunks.chunk(GenerationChunk(0))["id"], chunks.usage_chunk()["id"], chunks.id}) == 1


def test_chat_chunks_without_usage_have_no_usage_key() -> None:
    chunk = adapter.ChatChunkAdapter("m", include_usage=False).chunk(GenerationChunk(0, text="a"))
    assert "usage" not in chunk


def test_chat_completion_body_golden() -> None:
    result = GenerationResult(
        choices=[
            ChoiceResult(0, text="tok0 ", reasoning="r", logprobs=[LP], finish_reason="stop"),
            ChoiceResult(1, tool_calls=[ToolCallDelta(0, "call_1", "f", "{}")], finish_reason="tool_calls"),
        ],
        usage=Usage(3, 2),
    )
    assert masked(adapter.chat_completion_body(result, "gpt-4o-mini")) == {
        "id": "chatcmpl-*", "object": "chat.completion", "created": "*", "model": "gpt-4o-mini", "system_fingerprint": adapter.system_fingerprint("gpt-4o-mini"),
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "tok0 ", "refusal": None, "reasoning_content": "r"},
             "logprobs": {"content": [LP_WIRE], "refusal": None}, "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": None, "refusal": None,
                                     "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
             "logprobs": None, "finish_reason": "tool_calls"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}},
    }


CMPL_HEAD = {"id": "cmpl-*", "object": "text_completion", "created": "*", "model": "m", "system_fingerprint": adapter.system_fingerprint("m")}


def test_completion_chunks_golden() -> None:
    chunks = adapter.CompletionChunkAdapter("m", include_usage=True, echo_prompts={0: "ab "})
    lp1 = TokenLogprob("t1", -1.0, None, [TokenLogprob("t1", -1.0)])
    lp2 = TokenLogprob("t22", -2.0, None, [])
    got = [
        masked(chunks.chunk(GenerationChunk(0, text="t1", logprobs=[lp1]), prompt_group=0)),
        masked(chunks.chunk(GenerationChunk(2, text="x"), prompt_group=1)),
        masked(chunks.chunk(GenerationChunk(0, text="t22", logprobs=[lp2], finish_reason="stop", usage=Usage(2, 2)), prompt_group=0)),
        masked(chunks.chunk(GenerationChunk(2, finish_reason="length", usage=Usage(5, 1)), prompt_group=1)),
        masked(chunks.usage_chunk()),
    ]
    assert got == [
        {**CMPL_HEAD, "choices": [{"index": 0, "text": "ab t1", "logprobs": {"tokens": ["t1"], "token_logprobs": [-1.0], "top_logprobs": [{"t1": -1.0}], "text_offset": [3]}, "finish_reason": None}]},
        {**CMPL_HEAD, "choices": [{"index": 2, "text": "x", "logprobs": None, "finish_reason": None}]},
        {**CMPL_HEAD, "choices": [{"index": 0, "text": "t22", "logprobs": {"tokens": ["t22"], "token_logprobs": [-2.0], "top_logprobs": [{}], "text_offset": [5]}, "finish_reason": "stop"}]},
        {**CMPL_HEAD, "choices": [{"index": 2, "text": "", "logprobs": None, "finish_reason": "length"}]},
        {**CMPL_HEAD, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 0}}},
    ]


def test_completion_body_golden() -> None:
    results = [
        GenerationResult([ChoiceResult(0, "a", finish_reason="stop"), ChoiceResult(1, "b", finish_reason="length")], Usage(2, 3)),
        GenerationResult([ChoiceResult(0, "c", logprobs=[TokenLogprob("c", -0.5)], finish_reason="stop"), ChoiceResult(1, "d", finish_reason="stop")], Usage(4, 2)),
    ]
    assert masked(adapter.completion_body(results, "m", [None, "p: "], n=2)) == {
        **CMPL_HEAD,
        "choices": [
            {"index": 0, "text": "a", "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "text": "b", "logprobs": None, "finish_reason": "length"},
            {"index": 2, "text": "p: c", "logprobs": {"tokens": ["c"], "token_logprobs": [-0.5], "top_logprobs": [{}], "text_offset": [3]}, "finish_reason": "stop"},
            {"index": 3, "text": "p: d", "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11, "prompt_tokens_details": {"cached_tokens": 0}},
    }


def test_embeddings_body_golden() -> None:
    result = EmbeddingResult(vectors=[[0.5, -1.0], [0.25, 2.0]], prompt_tokens=4)
    assert adapter.embeddings_body(result, "text-embedding-3-small", "float") == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 1, "embedding": [0.25, 2.0]},
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    encoded = adapter.embeddings_body(result, "m", "base64")["data"][0]["embedding"]
    assert encoded == base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode() == "AAAAPwAAgL8="
    assert adapter.embeddings_body(result, "m", None)["data"][1]["embedding"] == [0.25, 2.0]


def test_model_object_golden() -> None:
    card = ModelCard(name="smollm2:135m", created=1700000000, owned_by="me")
    assert adapter.model_object(ModelStatus(card=card, state="starting", replicas=0)) == {
        "id": "smollm2:135m", "object": "model", "created": 1700000000, "owned_by": "me", "state": "starting",
        "root": "smollm2:135m", "parent": None,
    }
    # A LoRA adapter, as vLLM lists one: its base is its parent and root.
    lora = card.model_copy(update={"name": "smollm2-pirate:135m", "base_model": "smollm2:135m"})
    body = adapter.model_object(ModelStatus(card=lora))
    assert (body["id"], body["root"], body["parent"]) == ("smollm2-pirate:135m", "smollm2:135m", "smollm2:135m")


def test_usage_dict() -> None:
    assert adapter.usage_dict(Usage(2, 5)) == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}}
