"""The real ``ollama`` Python client (sync and async) against the app over real HTTP."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator

import httpx
import jsonschema
import ollama
import pytest

from deployments.engines.fake import FakeEngineConfig
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app
from tests.servers import serve_in_thread

PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e5270de40000000049454e44ae426082"
    )
).decode()
MESSAGES = [{"role": "user", "content": "hello there"}]
TIMING_FIELDS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration")


@pytest.fixture
def olc(shared_live_url: str) -> ollama.Client:
    return ollama.Client(host=shared_live_url, timeout=10)


@pytest.fixture
def aolc(shared_live_url: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=shared_live_url, timeout=10)


def expected_text(n_tokens: int) -> str:
    return "".join(f"tok{i} " for i in range(n_tokens))


def assert_final(reply: ollama.ChatResponse | ollama.GenerateResponse, prompt_count: int, eval_count: int) -> None:
    assert reply.done is True
    assert reply.done_reason in ("stop", "length")
    assert reply.total_duration > 0
    assert reply.load_duration == 0
    assert reply.prompt_eval_duration > 0
    assert reply.eval_duration > 0
    assert reply.prompt_eval_count == prompt_count
    assert reply.eval_count == eval_count
    assert reply.total_duration >= reply.prompt_eval_duration
    assert reply.created_at.endswith("Z") and len(reply.created_at.split(".")[1]) == 10  # nanoseconds + Z


# -- chat and generate --------------------------------------------------------------------------


def test_chat_non_streaming(olc: ollama.Client) -> None:
    reply = olc.chat(model="smollm2", messages=MESSAGES)
    assert reply.model == "smollm2"
    assert reply.message.role == "assistant"
    assert reply.message.content == expected_text(8)
    assert reply.done_reason == "stop"
    assert_final(reply, prompt_count=3, eval_count=8)


def test_chat_streaming(olc: ollama.Client) -> None:
    parts = list(olc.chat(model=CHAT_MODEL, messages=MESSAGES, stream=True))
    assert all(not p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == expected_text(8)
    final = parts[-1]
    assert final.message.content == ""
    assert_final(final, prompt_count=3, eval_count=8)
    # Only the final object carries the counts and durations.
    for part in parts[:-1]:
        assert all(getattr(part, f) is None for f in TIMING_FIELDS)
        assert part.done_reason is None


def test_generate_non_streaming(olc: ollama.Client) -> None:
    reply = olc.generate(model=CHAT_MODEL, prompt="why is the sky blue")
    assert reply.response == expected_text(8)
    assert reply.done_reason == "stop"
    assert_final(reply, prompt_count=6, eval_count=8)  # 5 words + 1 for the role


def test_generate_streaming(olc: ollama.Client) -> None:
    parts = list(olc.generate(model=CHAT_MODEL, prompt="why is the sky blue", stream=True, options={"num_predict": 3}))
    assert "".join(p.response for p in parts) == expected_text(3)
    assert parts[-1].done_reason == "length"
    assert_final(parts[-1], prompt_count=6, eval_count=3)


def test_generate_raw_and_system(olc: ollama.Client) -> None:
    reply = olc.generate(model=CHAT_MODEL, prompt="a b c", raw=True, options={"num_predict": 2})
    assert reply.response == expected_text(2)
    assert reply.prompt_eval_count == 3  # raw: no template, no role token
    reply = olc.generate(model=CHAT_MODEL, prompt="a b c", system="be brief", options={"num_predict": 2})
    assert reply.prompt_eval_count == 7  # (1 + 2) system + (1 + 3) user


def test_generate_suffix(olc: ollama.Client) -> None:
    reply = olc.generate(model=CHAT_MODEL, prompt="def f(", suffix="):", options={"num_predict": 2})
    assert reply.response == expected_text(2)
    with pytest.raises(ollama.ResponseError) as info:
        olc.generate(model=VISION_MODEL, prompt="def f(", suffix="):")
    assert info.value.status_code == 400


async def test_async_chat_and_generate(aolc: ollama.AsyncClient) -> None:
    reply = await aolc.chat(model=CHAT_MODEL, messages=MESSAGES, options={"num_predict": 2})
    assert reply.message.content == expected_text(2)
    assert reply.done_reason == "length"
    text = ""
    final = None
    async for part in await aolc.generate(model=CHAT_MODEL, prompt="hi", stream=True):
        text += part.response
        final = part
    assert text == expected_text(8)
    assert_final(final, prompt_count=2, eval_count=8)
    parts = [p async for p in await aolc.chat(model=CHAT_MODEL, messages=MESSAGES, stream=True)]
    assert parts[-1].done and parts[-1].eval_count == 8


def test_options_mapping(olc: ollama.Client) -> None:
    reply = olc.generate(model=CHAT_MODEL, prompt="hi", options={"num_predict": 2})
    assert reply.done_reason == "length" and reply.eval_count == 2
    reply = olc.generate(model=CHAT_MODEL, prompt="hi", options={"stop": ["tok2"]})
    assert reply.response == expected_text(2)
    assert reply.done_reason == "stop"
    reply = olc.chat(
        model=CHAT_MODEL,
        messages=MESSAGES,
        options=ollama.Options(temperature=0.2, top_p=0.9, top_k=20, seed=1, repeat_penalty=1.1, num_predict=-1),
    )
    assert reply.message.content == expected_text(8)


def test_unhonoured_options_are_named(shared_live_url: str) -> None:
    reply = httpx.post(
        f"{shared_live_url}/api/generate",
        json={"model": CHAT_MODEL, "prompt": "hi", "stream": False, "options": {"mirostat": 1, "num_gpu": 2}, "keep_alive": "5m"},
    )
    assert reply.status_code == 200
    assert reply.headers["x-unsupported-params"] == "options.mirostat, options.num_gpu"


def test_num_ctx_is_a_context_check(olc: ollama.Client) -> None:
    # Ollama fits an over-long prompt into num_ctx (tests/contract/test_ollama_context.py has
    # the rules); with truncate false it refuses it.
    reply = olc.generate(model=CHAT_MODEL, prompt="a b c d e f", options={"num_ctx": 4})
    assert reply.prompt_eval_count < 4
    refused = httpx.post(
        f"{olc._client.base_url}/api/generate",
        json={"model": CHAT_MODEL, "prompt": "a b c d e f", "options": {"num_ctx": 4}, "truncate": False},
    )
    assert refused.status_code == 400


def test_empty_prompt_loads(olc: ollama.Client) -> None:
    reply = olc.generate(model=CHAT_MODEL, prompt="")
    assert reply.done is True and reply.done_reason == "load"
    reply = olc.chat(model=CHAT_MODEL, messages=[])
    assert reply.done_reason == "load"
    reply = olc.generate(model=CHAT_MODEL, keep_alive=0)
    assert reply.done_reason == "unload"
    with pytest.raises(ollama.ResponseError) as info:
        olc.generate(model="nope:1b")
    assert info.value.status_code == 404


def test_format_json(olc: ollama.Client) -> None:
    reply = olc.chat(model=CHAT_MODEL, messages=MESSAGES, format="json")
    assert isinstance(json.loads(reply.message.content), dict)
    reply = olc.generate(model=CHAT_MODEL, prompt="hi", format="json")
    assert isinstance(json.loads(reply.response), dict)


def test_format_schema(olc: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 3}},
        "required": ["name", "age"],
    }
    reply = olc.chat(model=CHAT_MODEL, messages=MESSAGES, format=schema)
    jsonschema.validate(json.loads(reply.message.content), schema)
    streamed = "".join(p.response for p in olc.generate(model=CHAT_MODEL, prompt="hi", format=schema, stream=True))
    jsonschema.validate(json.loads(streamed), schema)


def get_weather(city: str) -> str:
    """Get the weather in a city.

    Args:
        city: The city.
    """
    return "sunny"


def test_tools(olc: ollama.Client) -> None:
    reply = olc.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "call get_weather please"}], tools=[get_weather])
    calls = reply.message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"arg": "tok0"}
    assert isinstance(calls[0].function.arguments, dict)
    assert reply.done_reason == "stop"
    parts = list(
        olc.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "get_weather now"}], tools=[get_weather], stream=True)
    )
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert streamed[0].function.arguments == {"arg": "tok0"}
    assert parts[-1].done


def test_tool_results_round_trip(olc: ollama.Client) -> None:
    messages = [
        {"role": "user", "content": "what is the weather"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    reply = olc.chat(model=CHAT_MODEL, messages=messages, tools=[get_weather])
    assert reply.message.content == expected_text(8)


def test_tools_on_model_without_tools(olc: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        olc.chat(model=VISION_MODEL, messages=MESSAGES, tools=[get_weather])
    assert info.value.status_code == 400
    assert "does not support tools" in info.value.error


def test_think(olc: ollama.Client) -> None:
    reply = olc.chat(model=CHAT_MODEL, messages=MESSAGES, think=True)
    assert reply.message.thinking == "think0 think1 think2 "
    assert reply.message.content == expected_text(8)
    parts = list(olc.generate(model=CHAT_MODEL, prompt="hi", think=True, stream=True))
    assert "".join(p.thinking or "" for p in parts) == "think0 think1 think2 "
    assert "".join(p.response for p in parts) == expected_text(8)
    with pytest.raises(ollama.ResponseError) as info:
        olc.chat(model=VISION_MODEL, messages=MESSAGES, think=True)
    assert info.value.status_code == 400


def test_images(olc: ollama.Client) -> None:
    reply = olc.generate(model=VISION_MODEL, prompt="what is this", images=[PNG_1PX])
    assert reply.response == expected_text(8)
    reply = olc.chat(model=VISION_MODEL, messages=[{"role": "user", "content": "what", "images": [base64.b64decode(PNG_1PX)]}])
    assert reply.message.content == expected_text(8)
    with pytest.raises(ollama.ResponseError) as info:
        olc.generate(model=CHAT_MODEL, prompt="what is this", images=[PNG_1PX])
    assert info.value.status_code == 400


# -- embeddings ---------------------------------------------------------------------------------


def test_embed(olc: ollama.Client) -> None:
    reply = olc.embed(model=EMBED_MODEL, input=["a b", "c"])
    assert len(reply.embeddings) == 2 and all(len(v) == 384 for v in reply.embeddings)
    assert math.isclose(sum(v * v for v in reply.embeddings[0]), 1.0, rel_tol=1e-6)
    assert reply.prompt_eval_count == 3
    assert reply.total_duration > 0
    single = olc.embed(model="all-minilm:l6-v2", input="a b")
    assert single.embeddings[0] == reply.embeddings[0]
    assert len(olc.embed(model=EMBED_MODEL, input="a", dimensions=16).embeddings[0]) == 16


async def test_embed_async_and_legacy(aolc: ollama.AsyncClient, olc: ollama.Client) -> None:
    reply = await aolc.embed(model=EMBED_MODEL, input="a b")
    legacy = olc.embeddings(model=EMBED_MODEL, prompt="a b")
    assert legacy.embedding == pytest.approx(reply.embeddings[0])
    assert (await aolc.embeddings(model=EMBED_MODEL, prompt="a b")).embedding == legacy.embedding
    with pytest.raises(ollama.ResponseError) as info:
        olc.embed(model=CHAT_MODEL, input="a")
    assert info.value.status_code == 400


# -- models -------------------------------------------------------------------------------------


def test_list(olc: ollama.Client) -> None:
    models = olc.list().models
    assert [m.model for m in models] == [CHAT_MODEL, VISION_MODEL, EMBED_MODEL]
    chat = models[0]
    assert chat.details.family == "llama"
    assert chat.details.parameter_size == "135M"
    assert chat.digest and chat.modified_at is not None


def test_show(olc: ollama.Client) -> None:
    shown = olc.show("smollm2")
    assert shown.capabilities == ["completion", "tools", "thinking", "insert"]
    assert shown.details.family == "llama"
    assert shown.details.quantization_level == "F32"
    assert shown.modelinfo["llama.context_length"] == 64
    embed = olc.show(EMBED_MODEL)
    assert embed.capabilities == ["embedding"]
    assert embed.modelinfo["bert.embedding_length"] == 384
    with pytest.raises(ollama.ResponseError) as info:
        olc.show("nope")
    assert info.value.status_code == 404


def test_ps(olc: ollama.Client) -> None:
    running = olc.ps().models
    assert {m.model for m in running} == {CHAT_MODEL, VISION_MODEL, EMBED_MODEL}
    assert all(m.expires_at is not None for m in running)
    assert next(m for m in running if m.model == CHAT_MODEL).context_length == 64


async def test_async_list_show_ps(aolc: ollama.AsyncClient) -> None:
    assert len((await aolc.list()).models) == 3
    assert "vision" in (await aolc.show(VISION_MODEL)).capabilities
    assert len((await aolc.ps()).models) == 3


def test_version_and_banner(shared_live_url: str) -> None:
    assert httpx.get(f"{shared_live_url}/api/version").json() == {"version": "0.12.10"}
    banner = httpx.get(shared_live_url)
    assert banner.status_code == 200 and banner.text == "Ollama is running"
    assert httpx.head(shared_live_url).status_code == 200


# -- errors -------------------------------------------------------------------------------------


def test_unknown_model(olc: ollama.Client) -> None:
    for call in (
        lambda: olc.chat(model="nope", messages=MESSAGES),
        lambda: list(olc.chat(model="nope", messages=MESSAGES, stream=True)),
        lambda: olc.generate(model="nope", prompt="hi"),
        lambda: olc.embed(model="nope", input="x"),
        lambda: olc.embeddings(model="nope", prompt="x"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404
        assert "nope" in info.value.error


@pytest.mark.parametrize(
    "options",
    [{"temperature": 5}, {"top_p": 2}, {"num_predict": 0}, {"presence_penalty": 9}, {"num_ctx": 0}, {"top_k": "x"}],
)
def test_bad_options(olc: ollama.Client, options: dict[str, object]) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        olc.generate(model=CHAT_MODEL, prompt="hi", options=options)
    assert info.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as info:
        list(olc.chat(model=CHAT_MODEL, messages=MESSAGES, options=options, stream=True))
    assert info.value.status_code == 400


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.pull("smollm2"),
        lambda c: list(c.pull("smollm2", stream=True)),
        lambda c: c.push("smollm2"),
        lambda c: c.create(model="mine", from_="smollm2"),
        lambda c: c.copy("smollm2", "mine"),
        lambda c: c.delete("smollm2"),
    ],
    ids=["pull", "pull-stream", "push", "create", "copy", "delete"],
)
def test_management_routes_forbidden(olc: ollama.Client, call: object) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        call(olc)  # type: ignore[operator]
    assert info.value.status_code == 403
    assert "config.yaml" in info.value.error


@pytest.fixture
def failing_url() -> Iterator[str]:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=3))
    with serve_in_thread(app) as url:
        yield url


def test_mid_stream_error(failing_url: str) -> None:
    client = ollama.Client(host=failing_url)
    received = []
    with pytest.raises(ollama.ResponseError) as info:
        for part in client.chat(model=CHAT_MODEL, messages=MESSAGES, stream=True):
            received.append(part.message.content)
    assert received == ["tok0 ", "tok1 ", "tok2 "]
    # An engine failure is not the client's fault and shows no internals: a fixed message and
    # the request id to find the detail in the log by.
    assert "The server had an error" in info.value.error and "request id: " in info.value.error
    assert "fake engine" not in info.value.error and "fail after" not in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=CHAT_MODEL, prompt="hi")
    assert info.value.status_code == 500
