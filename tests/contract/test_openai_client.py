"""The real ``openai`` Python client (sync and async) against the app over real HTTP."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from deployments.engines.fake import FakeEngineConfig
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app
from tests.servers import serve_in_thread

MESSAGES = [{"role": "user", "content": "hello there"}]
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e5270de40000000049454e44ae426082"
    )
).decode()
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture
def oai(shared_live_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{shared_live_url}/v1", api_key="x", max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def aoai(shared_live_url: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{shared_live_url}/v1", api_key="x", max_retries=0, timeout=10)


def expected_text(n_tokens: int) -> str:
    return "".join(f"tok{i} " for i in range(n_tokens))


# -- chat --------------------------------------------------------------------------------------


def test_chat_non_streaming(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-4o-mini"
    assert isinstance(reply.created, int)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(8)
    assert choice.finish_reason == "stop"
    # One token per word plus one per message under the fake tokenizer.
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (3, 8, 11)


def test_chat_streaming(oai: OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected_text(8)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)


def test_chat_stream_include_usage_chunk_comes_last(oai: OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=3
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (3, 3, 6)
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.choices for c in chunks[:-1])


def test_chat_stream_include_usage_raw_frames(shared_live_url: str) -> None:
    import httpx

    body = {
        "model": CHAT_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 2,
    }
    reply = httpx.post(f"{shared_live_url}/v1/chat/completions", json=body)
    assert reply.headers["content-type"].startswith("text/event-stream")
    frames = reply.text.split("\n\n")
    assert frames[-1] == ""
    assert frames[-2] == "data: [DONE]"
    usage_frame = json.loads(frames[-3].removeprefix("data: "))
    assert usage_frame["choices"] == []
    assert usage_frame["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}}


async def test_chat_async_both_modes(aoai: AsyncOpenAI) -> None:
    async with aoai:
        reply = await aoai.chat.completions.create(model="smollm2", messages=MESSAGES, max_tokens=4)
        assert reply.choices[0].message.content == expected_text(4)
        assert reply.choices[0].finish_reason == "length"
        stream = await aoai.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True, max_tokens=4)
        text = ""
        finish = None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert text == expected_text(4)
        assert finish == "length"


def test_max_tokens_gives_length(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == expected_text(2)
    assert reply.usage.completion_tokens == 2
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_completion_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3


def test_stop_strings(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stop=["tok3"])
    assert reply.choices[0].message.content == expected_text(3)
    assert reply.choices[0].finish_reason == "stop"
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stop="tok1")
    assert reply.choices[0].message.content == "tok0 "


def test_n_choices(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, n=3, max_tokens=2)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == expected_text(2) for c in reply.choices)
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens == 3
    texts: dict[int, str] = {}
    roles: dict[int, str | None] = {}
    for chunk in oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, n=3, max_tokens=2, stream=True):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            roles.setdefault(choice.index, choice.delta.role)
    assert texts == {i: expected_text(2) for i in range(3)}
    assert roles == {i: "assistant" for i in range(3)}


def test_logprobs(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2, max_tokens=3
    )
    content = reply.choices[0].logprobs.content
    assert [lp.token for lp in content] == ["tok0 ", "tok1 ", "tok2 "]
    assert all(lp.logprob == -0.25 for lp in content)
    assert all(len(lp.top_logprobs) == 2 for lp in content)
    assert content[0].bytes == list(b"tok0 ")
    streamed = []
    for chunk in oai.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, logprobs=True, top_logprobs=1, max_tokens=3, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += [lp.token for lp in chunk.choices[0].logprobs.content]
    assert streamed == ["tok0 ", "tok1 ", "tok2 "]


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_tool_calls(oai: OpenAI, tool_choice: object) -> None:
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == ("get_weather" if tool_choice == "required" else "get_time")
    assert isinstance(call.function.arguments, str)
    assert json.loads(call.function.arguments) == {"arg": "tok0"}

    finish = None
    calls = []
    for chunk in oai.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, stream=True
    ):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            calls += c.delta.tool_calls or []
    assert finish == "tool_calls"
    assert calls[0].index == 0
    assert json.loads(calls[0].function.arguments) == {"arg": "tok0"}


def test_tool_results_round_trip(oai: OpenAI) -> None:
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
    ]
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=messages, tools=TOOLS, tool_choice="none")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.tool_calls is None


def test_response_format_json_object(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_response_format_json_schema(oai: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "temps": {"type": "array", "items": {"type": "number"}, "minItems": 2},
            "sunny": {"type": "boolean"},
        },
        "required": ["city", "temps", "sunny"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}}
    reply = oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, response_format=fmt)
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, response_format=fmt, stream=True)
    )
    jsonschema.validate(json.loads(streamed), schema)


def image_message(url: str) -> list[dict[str, object]]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def test_image_to_vision_model(oai: OpenAI) -> None:
    reply = oai.chat.completions.create(model=VISION_MODEL, messages=image_message(f"data:image/png;base64,{PNG_1PX}"))
    assert reply.choices[0].message.content == expected_text(8)


def test_image_to_text_model_rejected(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=image_message(f"data:image/png;base64,{PNG_1PX}"))
    assert info.value.status_code == 400
    assert "vision" in info.value.message or "images" in info.value.message


def test_remote_image_url_rejected(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=VISION_MODEL, messages=image_message("https://example.com/cat.png"))
    assert info.value.body["param"] == "messages[0].content[1].image_url.url"


def test_invalid_base64_image_rejected(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=VISION_MODEL, messages=image_message("data:image/png;base64,@@@"))


# -- completions -------------------------------------------------------------------------------


def test_completion_string_prompt(oai: OpenAI) -> None:
    reply = oai.completions.create(model=CHAT_MODEL, prompt="once upon a time")
    assert reply.id.startswith("cmpl-")
    assert reply.object == "text_completion"
    # The legacy API's default max_tokens is 16; the fake answers 8 tokens.
    assert reply.choices[0].text == expected_text(8)
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 8)


def test_completion_list_of_prompts(oai: OpenAI) -> None:
    reply = oai.completions.create(model=CHAT_MODEL, prompt=["a b", "c"], max_tokens=2, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.text == expected_text(2) for c in reply.choices)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 8)
    texts: dict[int, str] = {}
    for chunk in oai.completions.create(model=CHAT_MODEL, prompt=["a b", "c"], max_tokens=2, n=2, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {i: expected_text(2) for i in range(4)}


def test_completion_echo(oai: OpenAI) -> None:
    reply = oai.completions.create(model=CHAT_MODEL, prompt="say ", echo=True, max_tokens=2)
    assert reply.choices[0].text == "say " + expected_text(2)
    streamed = "".join(
        c.choices[0].text
        for c in oai.completions.create(model=CHAT_MODEL, prompt="say ", echo=True, max_tokens=2, stream=True)
        if c.choices
    )
    assert streamed == "say " + expected_text(2)


def test_completion_suffix(oai: OpenAI) -> None:
    reply = oai.completions.create(model=CHAT_MODEL, prompt="def f(", suffix="):", max_tokens=2)
    assert reply.choices[0].text == expected_text(2)
    with pytest.raises(openai.BadRequestError):
        oai.completions.create(model=VISION_MODEL, prompt="def f(", suffix="):", max_tokens=2)


def test_completion_logprobs(oai: OpenAI) -> None:
    reply = oai.completions.create(model=CHAT_MODEL, prompt="hi", logprobs=2, max_tokens=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs.tokens == ["tok0 ", "tok1 "]
    assert logprobs.token_logprobs == [-0.25, -0.25]
    assert logprobs.text_offset == [0, 5]
    assert logprobs.top_logprobs[0] == {"tok0 ": -0.25, "alt ": -1.75}


async def test_completion_async_stream_usage(aoai: AsyncOpenAI) -> None:
    async with aoai:
        stream = await aoai.completions.create(
            model=CHAT_MODEL, prompt="a b c", max_tokens=3, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 3)
    assert "".join(c.choices[0].text for c in chunks[:-1]) == expected_text(3)


# -- embeddings --------------------------------------------------------------------------------


def test_embeddings_float(oai: OpenAI) -> None:
    reply = oai.embeddings.create(model="text-embedding-3-small", input=["a b", "c"], encoding_format="float")
    assert reply.object == "list"
    assert [d.index for d in reply.data] == [0, 1]
    assert all(len(d.embedding) == 384 for d in reply.data)
    assert math.isclose(sum(v * v for v in reply.data[0].embedding), 1.0, rel_tol=1e-6)
    assert reply.usage.prompt_tokens == 3
    assert reply.usage.total_tokens == 3


def test_embeddings_base64_decoded_by_sdk(oai: OpenAI) -> None:
    as_floats = oai.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="float")
    # The SDK asks for base64 by default and decodes it to floats itself.
    as_default = oai.embeddings.create(model=EMBED_MODEL, input="hello")
    as_base64 = oai.embeddings.create(model=EMBED_MODEL, input="hello", encoding_format="base64")
    reference = as_floats.data[0].embedding
    for reply in (as_default, as_base64):
        got = reply.data[0].embedding
        if isinstance(got, str):  # an SDK that leaves explicit base64 encoded
            import struct

            raw = base64.b64decode(got)
            got = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert len(got) == 384
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(got, reference, strict=True))


def test_embeddings_dimensions(oai: OpenAI) -> None:
    reply = oai.embeddings.create(model=EMBED_MODEL, input="hello", dimensions=8, encoding_format="float")
    assert len(reply.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model=EMBED_MODEL, input="hello", dimensions=4096)
    assert info.value.body["param"] == "dimensions"


async def test_embeddings_async_token_ids(aoai: AsyncOpenAI) -> None:
    async with aoai:
        reply = await aoai.embeddings.create(model=EMBED_MODEL, input=[[1, 2, 3], [4]], encoding_format="float")
    assert len(reply.data) == 2
    assert reply.usage.prompt_tokens == 4


def test_embeddings_on_chat_model_rejected(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model=CHAT_MODEL, input="hello")
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=EMBED_MODEL, messages=MESSAGES)


# -- models ------------------------------------------------------------------------------------


def test_models_list_and_retrieve(oai: OpenAI) -> None:
    models = oai.models.list()
    assert [m.id for m in models.data] == [CHAT_MODEL, VISION_MODEL, EMBED_MODEL]
    assert all(m.object == "model" and m.owned_by for m in models.data)
    assert oai.models.retrieve("gpt-4o-mini").id == CHAT_MODEL
    assert oai.models.retrieve(CHAT_MODEL).id == CHAT_MODEL
    with pytest.raises(openai.NotFoundError) as info:
        oai.models.retrieve("gpt-5")
    assert info.value.code == "model_not_found"


async def test_models_async(aoai: AsyncOpenAI) -> None:
    async with aoai:
        ids = [m.id async for m in aoai.models.list()]
        assert EMBED_MODEL in ids
        assert (await aoai.models.retrieve("text-embedding-3-small")).id == EMBED_MODEL


# -- errors ------------------------------------------------------------------------------------


def test_unknown_model(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-5", prompt="x")
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="gpt-5", input="x")
    with pytest.raises(openai.NotFoundError):
        list(oai.chat.completions.create(model="gpt-5", messages=MESSAGES, stream=True))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("top_p", 0),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
        ("n", 0),
        ("n", 9),
        ("max_tokens", 0),
        ("top_logprobs", 25),
    ],
)
def test_out_of_range_params(oai: OpenAI, field: str, value: float) -> None:
    extra = {"logprobs": True} if field == "top_logprobs" else {}
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **{field: value}, **extra)
    assert info.value.status_code == 400
    assert info.value.param == field
    assert info.value.body["type"] == "invalid_request_error"


def test_out_of_range_on_completions_and_stream(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.completions.create(model=CHAT_MODEL, prompt="x", temperature=3)
    assert info.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        list(oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, top_p=2, stream=True))
    assert info.value.param == "top_p"


def test_context_length_exceeded(oai: OpenAI) -> None:
    long = [{"role": "user", "content": "word " * 80}]
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=long)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        list(oai.chat.completions.create(model=CHAT_MODEL, messages=long, stream=True))
    assert info.value.code == "context_length_exceeded"


def test_unknown_argument_rejected(oai: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, extra_body={"bogus": 1})
    assert info.value.param == "bogus"


def test_authentication_error() -> None:
    app, _ = build_fake_app(IngressSettings(api_keys=["sk-right"]))
    with serve_in_thread(app) as url:
        with OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                bad.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
            assert info.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        with OpenAI(base_url=f"{url}/v1", api_key="sk-right", max_retries=0) as good:
            assert good.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES).choices


@pytest.fixture
def failing_url() -> Iterator[str]:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=3))
    with serve_in_thread(app) as url:
        yield url


def test_mid_stream_error_raises(failing_url: str) -> None:
    with OpenAI(base_url=f"{failing_url}/v1", api_key="x", max_retries=0) as client:
        received = []
        with pytest.raises(openai.APIError) as info:
            for chunk in client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True):
                received += [c.delta.content for c in chunk.choices]
        assert received == ["tok0 ", "tok1 ", "tok2 "]
        # No internals in the body: a fixed message and the request id for the log.
        assert info.value.message.startswith("The server had an error") and "request id: " in info.value.message
        assert "fake engine" not in info.value.message
        # Without streaming the failure keeps its real status.
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with pytest.raises(openai.APIError):
            list(client.completions.create(model=CHAT_MODEL, prompt="x", stream=True))


async def test_mid_stream_error_raises_async(failing_url: str) -> None:
    async with AsyncOpenAI(base_url=f"{failing_url}/v1", api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
