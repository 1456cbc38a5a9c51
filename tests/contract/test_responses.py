"""The Responses API through the real ``openai`` client, over the fake engine and SQLite."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from deployments.engines.fake import FakeEngine, FakeEngineConfig
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app
from tests.servers import serve_in_thread

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
}


@pytest.fixture
def served() -> Iterator[tuple[OpenAI, FakeEngine, str]]:
    app, engines = build_fake_app()
    with serve_in_thread(app) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), engines[CHAT_MODEL], url


def roles_and_texts(engine: FakeEngine) -> list[tuple[str, str]]:
    """The turns of the last request the engine received."""
    return [(m.role, m.text()) for m in engine.recent_requests[-1].messages]


def test_plain_create_with_instructions(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    response = client.responses.create(model=CHAT_MODEL, input="hello there", instructions="Answer briefly.")
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status == "completed" and response.error is None
    assert response.output_text == "".join(f"tok{i} " for i in range(8))
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert response.usage is not None
    assert response.usage.output_tokens == 8
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert roles_and_texts(engine) == [("system", "Answer briefly."), ("user", "hello there")]


def test_max_output_tokens_makes_it_incomplete(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    response = client.responses.create(model=CHAT_MODEL, input="hi", max_output_tokens=3, temperature=0.5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "tok0 tok1 tok2 "
    assert response.temperature == 0.5 and response.max_output_tokens == 3


def test_json_schema_output(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = client.responses.create(
        model=CHAT_MODEL,
        input="where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
    )
    assert set(json.loads(response.output_text)) == {"city"}
    assert engine.recent_requests[-1].response_format.json_schema == schema
    assert response.text.format.type == "json_schema"


def test_function_tool_round_trip(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    first = client.responses.create(model=CHAT_MODEL, input="use get_weather for Paris", tools=[WEATHER_TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"arg": "tok0"}
    second = client.responses.create(
        model=CHAT_MODEL,
        previous_response_id=first.id,
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny and warm"}],
    )
    assert second.output_text.startswith("tok0")
    messages = engine.recent_requests[-1].messages
    assert [m.role for m in messages] == ["user", "assistant", "tool"]
    assert messages[1].tool_calls is not None and messages[1].tool_calls[0].id == call.call_id
    assert messages[2].tool_call_id == call.call_id and messages[2].text() == "sunny and warm"


def test_function_calls_sent_back_as_input_items(served: tuple[OpenAI, FakeEngine, str]) -> None:
    """Without previous_response_id, clients resend the whole history as items (agents do)."""
    client, engine, _ = served
    first = client.responses.create(model=CHAT_MODEL, input="use get_weather", tools=[WEATHER_TOOL], store=False)
    history = [{"role": "user", "content": "use get_weather"}, first.output[0].model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": first.output[0].call_id, "output": "rain"}]
    second = client.responses.create(model=CHAT_MODEL, input=history, tools=[WEATHER_TOOL])
    assert second.output_text.startswith("tok0")
    assert [m.role for m in engine.recent_requests[-1].messages] == ["user", "assistant", "tool"]


def test_stream_accumulates_the_final_text(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    deltas: list[str] = []
    with client.responses.stream(model=CHAT_MODEL, input="stream please") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(deltas) == "".join(f"tok{i} " for i in range(8))
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored before the end


def test_stream_events_in_order_with_sequence_numbers(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    events = list(client.responses.create(model=CHAT_MODEL, input="hi", stream=True, max_output_tokens=2))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].response.status == "in_progress"
    assert events[-1].response.usage.output_tokens == 2


def test_streamed_function_call_events(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    events = list(client.responses.create(model=CHAT_MODEL, input="get_weather", tools=[WEATHER_TOOL], stream=True))
    kinds = [e.type for e in events]
    assert kinds[2:] == [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[-1].response.output[0].arguments == events[4].arguments == events[3].delta


def test_mid_stream_failure_raises_in_the_client() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=2))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError, match="The server had an error"):
            for _ in client.responses.create(model=CHAT_MODEL, input="hi", stream=True):
                pass


def test_previous_response_chain_reaches_the_engine(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    first = client.responses.create(model=CHAT_MODEL, input="my name is Ada", instructions="first rules")
    second = client.responses.create(model=CHAT_MODEL, input="and I like tea", previous_response_id=first.id)
    third = client.responses.create(
        model=CHAT_MODEL, input="what do I like?", previous_response_id=second.id, instructions="new rules"
    )
    assert third.previous_response_id == second.id
    answer = first.output_text
    # Instructions are not carried over; every earlier input and output is.
    assert roles_and_texts(engine) == [
        ("system", "new rules"),
        ("user", "my name is Ada"),
        ("assistant", answer),
        ("user", "and I like tea"),
        ("assistant", second.output_text),
        ("user", "what do I like?"),
    ]
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens - 3


def test_retrieve_delete_and_input_items(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    items = [{"role": "user", "content": f"part {i}"} for i in range(5)]
    response = client.responses.create(model=CHAT_MODEL, input=items, metadata={"run": "7"})
    fetched = client.responses.retrieve(response.id)
    assert fetched.id == response.id and fetched.output_text == response.output_text
    assert fetched.metadata == {"run": "7"}
    page = client.responses.input_items.list(response.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["part 0", "part 1"]
    assert page.has_more
    texts = [i.content[0].text for i in client.responses.input_items.list(response.id, order="asc")]
    assert texts == [f"part {i}" for i in range(5)]  # the SDK follows the cursor
    newest = client.responses.input_items.list(response.id, limit=1)
    assert newest.data[0].content[0].text == "part 4"  # desc by default
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(response.id)
    assert info.value.body["param"] == "response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_keeps_nothing(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    response = client.responses.create(model=CHAT_MODEL, input="secret", store=False)
    assert response.store is False and response.output_text
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=CHAT_MODEL, input="more", previous_response_id=response.id)
    assert info.value.body["param"] == "previous_response_id"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "temperature": 3}, "temperature"),
        ({"input": "hi", "tool_choice": "required"}, None),
        ({"input": "hi", "previous_response_id": "resp_x", "conversation": "conv_x"}, None),
        ({"input": "hi", "extra_body": {"not_a_field": 1}}, "not_a_field"),
        ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ],
)
def test_bad_input_is_a_400_with_param(served: tuple[OpenAI, FakeEngine, str], body: dict, param: str | None) -> None:
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=CHAT_MODEL, **body)
    error = info.value.body
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_unknown_ids_and_models_are_404(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="hi")
    assert info.value.body["param"] == "model"  # type: ignore[index]
    for call in (
        lambda: client.responses.retrieve("resp_missing"),
        lambda: client.responses.input_items.list("resp_missing"),
        lambda: client.responses.cancel("resp_missing"),
        lambda: client.responses.create(model=CHAT_MODEL, input="hi", conversation="conv_missing"),
        lambda: client.responses.create(model=CHAT_MODEL, input="hi", previous_response_id="resp_missing"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()


def test_capability_checks_apply(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=EMBED_MODEL, input="hi")
    assert info.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.responses.create(
            model=CHAT_MODEL,
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
        )
    ok = client.responses.create(
        model=VISION_MODEL,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "what is it"},
                                              {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
    )
    assert ok.status == "completed"


def test_context_length_is_checked_over_the_rebuilt_history(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    long = " ".join(["word"] * 30)  # the fake chat model has a 64-token context
    first = client.responses.create(model=CHAT_MODEL, input=long)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=CHAT_MODEL, input=long, previous_response_id=first.id)
    assert info.value.code == "context_length_exceeded"
    fitted = client.responses.create(model=CHAT_MODEL, input=long, previous_response_id=first.id, truncation="auto")
    assert fitted.status in ("completed", "incomplete")


def test_unhonoured_fields_are_named() -> None:
    app, _ = build_fake_app()
    with serve_in_thread(app) as url:
        reply = httpx.post(f"{url}/v1/responses", json={"model": CHAT_MODEL, "input": "hi",
                                                        "reasoning": {"effort": "low"}, "service_tier": "flex"})
    assert reply.status_code == 200
    assert reply.headers["x-unsupported-params"] == "reasoning, service_tier"


def test_oversized_input_is_413() -> None:
    settings = IngressSettings(state={"max_stored_bytes": 2048})
    app, _ = build_fake_app(settings)
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(model=CHAT_MODEL, input="x " * 2000)
        assert info.value.status_code == 413
        assert info.value.body["param"] == "input"  # type: ignore[index]


def test_each_key_sees_only_its_own_objects() -> None:
    app, _ = build_fake_app(IngressSettings(api_keys=["sk-alice", "sk-bob"]))
    with serve_in_thread(app) as url:
        alice = OpenAI(base_url=f"{url}/v1", api_key="sk-alice", max_retries=0)
        bob = OpenAI(base_url=f"{url}/v1", api_key="sk-bob", max_retries=0)
        response = alice.responses.create(model=CHAT_MODEL, input="mine")
        conversation = alice.conversations.create()
        assert alice.responses.retrieve(response.id).id == response.id
        for call in (
            lambda: bob.responses.retrieve(response.id),
            lambda: bob.responses.delete(response.id),
            lambda: bob.responses.input_items.list(response.id),
            lambda: bob.responses.create(model=CHAT_MODEL, input="x", previous_response_id=response.id),
            lambda: bob.conversations.retrieve(conversation.id),
            lambda: bob.conversations.items.list(conversation.id),
            lambda: bob.responses.create(model=CHAT_MODEL, input="x", conversation=conversation.id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert alice.responses.retrieve(response.id).id == response.id  # bob's delete did nothing


def test_background_response_completes_and_can_be_polled() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(token_interval_s=0.01))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        queued = client.responses.create(model=CHAT_MODEL, input="later", background=True)
        assert queued.status == "queued" and queued.background
        deadline = time.monotonic() + 10
        while (polled := client.responses.retrieve(queued.id)).status in ("queued", "in_progress"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert polled.status == "completed" and polled.output_text.startswith("tok0")
        with pytest.raises(openai.BadRequestError):
            client.responses.cancel(queued.id)  # finished: nothing to cancel


def test_background_response_can_be_cancelled() -> None:
    app, engines = build_fake_app(engine_config=FakeEngineConfig(token_interval_s=0.5, output_tokens=100))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        queued = client.responses.create(model=CHAT_MODEL, input="long job", background=True)
        deadline = time.monotonic() + 5
        while not engines[CHAT_MODEL].in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelled = client.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        deadline = time.monotonic() + 5
        while engines[CHAT_MODEL].in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert engines[CHAT_MODEL].aborted  # the generation stopped, not just the row
        time.sleep(0.2)
        assert client.responses.retrieve(queued.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            client.responses.cancel(client.responses.create(model=CHAT_MODEL, input="x", max_output_tokens=1).id)


def test_background_needs_store() -> None:
    app, _ = build_fake_app()
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model=CHAT_MODEL, input="x", background=True, store=False)


def test_a_database_that_is_down_is_a_503_and_chat_carries_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_TEST_DOWN_DB", "postgresql://postgres@127.0.0.1:9/none")  # nothing listens
    app, _ = build_fake_app(IngressSettings(state={"database_url_env": "LLM_TEST_DOWN_DB"}))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.responses.create(model=CHAT_MODEL, input="hi")
        assert info.value.status_code == 503 and info.value.code == "store_unavailable"
        with pytest.raises(openai.InternalServerError):
            client.conversations.create()
        chat = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
