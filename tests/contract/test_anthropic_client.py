"""The real ``anthropic`` Python client (sync and async) against the app over real HTTP.

Messages, streams (``text_stream``, ``get_final_message``), a tool round trip, count_tokens, the
SDK's model listing, its exception classes, keys in ``x-api-key``, limits, metrics and usage
lines for these requests.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic import Anthropic, AsyncAnthropic

from deployments.engines.fake import FakeEngineConfig
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app
from tests.contract.test_metrics import scrape, value
from tests.servers import serve_in_thread

USER = [{"role": "user", "content": "hello there"}]
TOOLS = [{
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
}]
PNG_1PX = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e5270de40000000049454e44ae426082"
    )
).decode()
KEY = "sk-anthropic-0123456789abcdef"


def expected_text(n_tokens: int) -> str:
    return "".join(f"tok{i} " for i in range(n_tokens))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, dict[str, Any]]]:
    app, engines = build_fake_app()
    with serve_in_thread(app) as url:
        yield url, engines


@pytest.fixture
def client(served: tuple[str, dict[str, Any]]) -> Iterator[Anthropic]:
    with Anthropic(base_url=served[0], api_key="unused", max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
def aclient(served: tuple[str, dict[str, Any]]) -> AsyncAnthropic:
    return AsyncAnthropic(base_url=served[0], api_key="unused", max_retries=0, timeout=10)


# -- messages ---------------------------------------------------------------------------------


def test_create_returns_a_message(client: Anthropic) -> None:
    message = client.messages.create(model=CHAT_MODEL, max_tokens=64, messages=USER)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == CHAT_MODEL
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == expected_text(8)  # type: ignore[union-attr]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.input_tokens == 3 and message.usage.output_tokens == 8
    assert message._request_id  # the SDK reads it from the request-id header


def test_max_tokens_and_stop_sequences(client: Anthropic) -> None:
    cut = client.messages.create(model="smollm2", max_tokens=3, messages=USER)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    stopped = client.messages.create(model=CHAT_MODEL, max_tokens=64, messages=USER, stop_sequences=["nope", "tok4"])
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "tok4")
    assert stopped.content[0].text == expected_text(4)  # type: ignore[union-attr]


def test_system_sampling_and_metadata_reach_the_engine(client: Anthropic, served: tuple[str, dict[str, Any]]) -> None:
    # Sampling fields as older SDKs and plain HTTP clients send them (this SDK has none).
    client.messages.create(
        model=CHAT_MODEL, max_tokens=5, messages=USER, system=[{"type": "text", "text": "Be brief."}],
        metadata={"user_id": "u-1"}, extra_body={"temperature": 0.5, "top_p": 0.5, "top_k": 7},
    )
    seen = served[1][CHAT_MODEL].recent_requests[-1]
    assert [m.role for m in seen.messages] == ["system", "user"] and seen.messages[0].content == "Be brief."
    assert (seen.sampling.temperature, seen.sampling.top_p, seen.sampling.top_k) == (0.5, 0.5, 7)
    assert (seen.sampling.max_tokens, seen.user) == (5, "u-1")


def test_stream_text_and_final_message_equal_the_non_streamed_reply(client: Anthropic) -> None:
    with client.messages.stream(model=CHAT_MODEL, max_tokens=64, messages=USER) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == expected_text(8) == final.content[0].text  # type: ignore[union-attr]
    assert final.usage.input_tokens == 3 and final.usage.output_tokens == 8


FOLD_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "length": {"max_tokens": 3},
    "stop": {"stop_sequences": ["tok5"]},
    "thinking": {"thinking": {"type": "enabled", "budget_tokens": 1024}},
    "tools": {"tools": TOOLS, "tool_choice": {"type": "any"}},
    "json": {"output_config": {"format": {"type": "json_schema", "schema": {
        "type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}}}},
}


def comparable(message: Any) -> dict[str, Any]:
    """A message without what differs between two calls (ids)."""
    body = message.model_dump(exclude_none=True)
    body.pop("id")
    for block in body["content"]:
        block.pop("id", None)
        block.pop("parsed_output", None)
    return body


@pytest.mark.parametrize("case", list(FOLD_CASES))
def test_the_fold_of_a_stream_is_the_non_streamed_reply(client: Anthropic, case: str) -> None:
    params = {"model": CHAT_MODEL, "max_tokens": 32, "messages": USER, **FOLD_CASES[case]}
    whole = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        events = [event.type for event in stream]
        folded = stream.get_final_message()
    assert comparable(folded) == comparable(whole)
    assert events[0] == "message_start" and events[-1] == "message_stop"


def test_raw_stream_has_anthropics_event_sequence(served: tuple[str, dict[str, Any]]) -> None:
    body = {"model": CHAT_MODEL, "max_tokens": 2, "messages": USER, "stream": True}
    with httpx.stream("POST", f"{served[0]}/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"}) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in reply.read().decode().split("\n\n") if f]
    pairs = [(f.split("\n")[0].removeprefix("event: "), json.loads(f.split("\n")[1].removeprefix("data: "))) for f in frames]
    assert all(name == data["type"] for name, data in pairs)
    assert [name for name, _ in pairs] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert pairs[0][1]["message"]["usage"]["input_tokens"] == 3  # known before the first token
    assert pairs[-2][1]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}


def test_tool_round_trip(client: Anthropic, served: tuple[str, dict[str, Any]]) -> None:
    question = {"role": "user", "content": "call get_weather for Paris"}
    first = client.messages.create(model=CHAT_MODEL, max_tokens=32, tools=TOOLS, messages=[question])
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"arg": "tok0"}
    answer = client.messages.create(
        model=CHAT_MODEL, max_tokens=32, tools=TOOLS,
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C and sunny"}]},
        ],
    )
    assert answer.stop_reason == "end_turn" and answer.content[0].text == expected_text(8)  # type: ignore[union-attr]
    seen = served[1][CHAT_MODEL].recent_requests[-1]
    assert [m.role for m in seen.messages] == ["user", "assistant", "tool"]
    assert seen.messages[1].tool_calls[0].id == call.id
    assert json.loads(seen.messages[1].tool_calls[0].function.arguments) == {"arg": "tok0"}
    assert (seen.messages[2].tool_call_id, seen.messages[2].content) == (call.id, "18 C and sunny")


def test_streamed_tool_use_has_its_input(client: Anthropic) -> None:
    with client.messages.stream(
        model=CHAT_MODEL, max_tokens=32, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"}, messages=USER,
    ) as stream:
        deltas = [e.delta.partial_json for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        final = stream.get_final_message()
    assert json.loads("".join(deltas)) == {"arg": "tok0"}
    assert final.stop_reason == "tool_use" and final.content[0].input == {"arg": "tok0"}  # type: ignore[union-attr]


def test_image_blocks_reach_a_vision_model(client: Anthropic, served: tuple[str, dict[str, Any]]) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}
    client.messages.create(
        model=VISION_MODEL, max_tokens=4, messages=[{"role": "user", "content": [image, {"type": "text", "text": "what?"}]}]
    )
    [part] = served[1][VISION_MODEL].recent_requests[-1].messages[-1].images()
    assert (part.media_type, part.data_base64) == ("image/png", PNG_1PX)


# -- count_tokens and models -------------------------------------------------------------------


def test_count_tokens_matches_the_generations_input_tokens(client: Anthropic) -> None:
    params: dict[str, Any] = {"model": CHAT_MODEL, "system": "Be very brief.", "messages": USER}
    counted = client.messages.count_tokens(**params)
    used = client.messages.create(max_tokens=2, **params).usage
    assert counted.input_tokens == used.input_tokens + (used.cache_read_input_tokens or 0) == 7


def test_count_tokens_refuses_what_the_model_cannot_do(client: Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="does not support generate"):
        client.messages.count_tokens(model=EMBED_MODEL, messages=USER)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=USER)


def test_the_sdks_model_listing_works(client: Anthropic) -> None:
    assert {m.id for m in client.models.list()} == {CHAT_MODEL, VISION_MODEL, EMBED_MODEL}
    assert client.models.retrieve("smollm2").id == CHAT_MODEL


# -- errors -------------------------------------------------------------------------------------


def test_errors_raise_the_sdks_exception_classes(client: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="no-such-model", max_tokens=4, messages=USER)
    assert not_found.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=USER, extra_body={"temperature": 1.5})
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="Prefill is not supported"):
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=[*USER, {"role": "assistant", "content": "The"}])
    with pytest.raises(anthropic.BadRequestError, match="base64"):
        image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        client.messages.create(model=VISION_MODEL, max_tokens=4, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError, match="does not support images"):
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_1PX}}
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError, match="web_search"):
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=USER,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(anthropic.BadRequestError, match="context length"):
        client.messages.create(model=CHAT_MODEL, max_tokens=4, messages=[{"role": "user", "content": "w " * 80}])


def test_engine_failures_and_deadlines() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=0))
    with serve_in_thread(app) as url, Anthropic(base_url=url, api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.InternalServerError) as failed:
            sdk.messages.create(model=CHAT_MODEL, max_tokens=4, messages=USER)
        assert failed.value.status_code == 500 and failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=2))
    with serve_in_thread(app) as url, Anthropic(base_url=url, api_key="x", max_retries=0) as sdk:
        # After the first byte the failure arrives in-band, as an ``error`` event.
        with pytest.raises(anthropic.APIStatusError, match="api_error"):
            with sdk.messages.stream(model=CHAT_MODEL, max_tokens=8, messages=USER) as stream:
                list(stream.text_stream)
    settings = IngressSettings(request_deadline_s=0.2)
    app, _ = build_fake_app(settings, FakeEngineConfig(token_interval_s=0.1, output_tokens=50))
    with serve_in_thread(app) as url, Anthropic(base_url=url, api_key="x", max_retries=0) as sdk:
        with pytest.raises(anthropic.GatewayTimeoutError) as late:
            sdk.messages.create(model=CHAT_MODEL, max_tokens=50, messages=USER)
        assert late.value.body["error"]["type"] == "timeout_error"  # type: ignore[index]


def test_keys_limits_metrics_and_usage_lines(caplog: pytest.LogCaptureFixture) -> None:
    settings = IngressSettings(keys=[{"name": "team-a", "key": KEY, "requests_per_minute": 60, "burst": 3}])
    app, _ = build_fake_app(settings)
    with caplog.at_level(logging.INFO, logger="serve_app.usage"), serve_in_thread(app) as url:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            Anthropic(base_url=url, api_key="wrong", max_retries=0).messages.create(
                model=CHAT_MODEL, max_tokens=2, messages=USER)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        # The SDK's api_key travels as x-api-key (with anthropic-version); auth_token as a bearer.
        with Anthropic(base_url=url, api_key=KEY, max_retries=0) as sdk:
            sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=USER)
            sdk.messages.count_tokens(model=CHAT_MODEL, messages=USER)
        with Anthropic(base_url=url, auth_token=KEY, max_retries=0) as sdk:
            sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=USER)
            with pytest.raises(anthropic.RateLimitError) as limited:
                sdk.messages.create(model=CHAT_MODEL, max_tokens=2, messages=USER)
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert limited.value.response.headers["retry-after"]
        samples = scrape(url, {"x-api-key": KEY})
    labels = {"model": CHAT_MODEL, "api": "anthropic"}
    assert value(samples, "llm_requests_total", **labels, route="/v1/messages", status="200") == 2
    assert value(samples, "llm_requests_total", **labels, route="/v1/messages/count_tokens", status="200") == 1
    assert value(samples, "llm_completion_tokens_total", **labels) == 4
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve_app.usage"]
    served = [line for line in lines if line["route"] == "/v1/messages" and line["status"] == 200]
    assert len(served) == 2 and all(line["api"] == "anthropic" and line["key"] == "team-a" for line in served)
    assert all(line["completion_tokens"] == 2 and line["prompt_tokens"] == 3 for line in served)
    assert any(line["status"] == 429 and line["api"] == "anthropic" for line in lines)


# -- async ---------------------------------------------------------------------------------------


async def test_async_client_create_stream_and_count(aclient: AsyncAnthropic) -> None:
    async with aclient:
        message = await aclient.messages.create(model=CHAT_MODEL, max_tokens=4, messages=USER)
        assert message.content[0].text == expected_text(4)  # type: ignore[union-attr]
        async with aclient.messages.stream(model=CHAT_MODEL, max_tokens=4, messages=USER) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(texts) == final.content[0].text == expected_text(4)  # type: ignore[union-attr]
        assert (await aclient.messages.count_tokens(model=CHAT_MODEL, messages=USER)).input_tokens == 3
        with pytest.raises(anthropic.NotFoundError):
            await aclient.messages.create(model="no-such-model", max_tokens=4, messages=USER)


async def test_async_tool_round_trip(aclient: AsyncAnthropic) -> None:
    async with aclient:
        question = {"role": "user", "content": "get_weather please"}
        first = await aclient.messages.create(model=CHAT_MODEL, max_tokens=16, tools=TOOLS, messages=[question])
        [call] = [b for b in first.content if b.type == "tool_use"]
        answer = await aclient.messages.create(
            model=CHAT_MODEL, max_tokens=16, tools=TOOLS,
            messages=[question, {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "ok"}]}],
        )
        assert answer.stop_reason == "end_turn"
