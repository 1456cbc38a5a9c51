"""The real ``openai-agents`` Runner with its default (Responses) model, over the fake engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from agents import Agent, Runner, function_tool, set_default_openai_api, set_default_openai_client, set_tracing_disabled
from openai import AsyncOpenAI

from deployments.engines.fake import FakeEngine
from tests.conftest import CHAT_MODEL, build_fake_app
from tests.servers import serve_in_thread

CALLS: list[str] = []


@function_tool
def get_weather(arg: str) -> str:
    """The weather for a place.

    Args:
        arg: Where.
    """
    CALLS.append(arg)
    return f"sunny in {arg}"


@pytest.fixture
def agent_server() -> Iterator[tuple[str, FakeEngine]]:
    app, engines = build_fake_app()
    set_tracing_disabled(True)  # no trace export to api.openai.com
    set_default_openai_api("responses")
    with serve_in_thread(app) as url:
        yield url, engines[CHAT_MODEL]
    CALLS.clear()


def agent(url: str) -> Agent:
    set_default_openai_client(AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0),
                              use_for_tracing=False)
    return Agent(name="helper", instructions="Use tools when asked.", model=CHAT_MODEL, tools=[get_weather])


async def test_runner_calls_the_function_tool_and_answers(agent_server: tuple[str, FakeEngine]) -> None:
    url, engine = agent_server
    result = await Runner.run(agent(url), "please use get_weather for Paris")
    assert CALLS == ["tok0"]  # the fake model's call, run by the SDK
    assert result.final_output == "".join(f"tok{i} " for i in range(8))
    last = engine.recent_requests[-1].messages
    assert [m.role for m in last] == ["system", "user", "assistant", "tool"]
    assert last[-1].text() == "sunny in tok0"


async def test_runner_streamed(agent_server: tuple[str, FakeEngine]) -> None:
    url, _ = agent_server
    result = Runner.run_streamed(agent(url), "get_weather now")
    kinds = {event.type async for event in result.stream_events()}
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert CALLS == ["tok0"]
    assert result.final_output.startswith("tok0")


async def test_runner_chains_with_previous_response_id(agent_server: tuple[str, FakeEngine]) -> None:
    url, engine = agent_server
    first = await Runner.run(agent(url), "hello, I am Ada")
    assert first.last_response_id is not None
    await Runner.run(agent(url), "who am I?", previous_response_id=first.last_response_id)
    texts = [m.text() for m in engine.recent_requests[-1].messages]
    assert "hello, I am Ada" in texts and texts[-1] == "who am I?"


async def test_runner_in_a_server_side_conversation(agent_server: tuple[str, FakeEngine]) -> None:
    url, engine = agent_server
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    conversation = await client.conversations.create()
    await Runner.run(agent(url), "first turn", conversation_id=conversation.id)
    await Runner.run(agent(url), "second turn", conversation_id=conversation.id)
    texts = [m.text() for m in engine.recent_requests[-1].messages]
    assert texts[1] == "first turn" and texts[-1] == "second turn"
    items = await client.conversations.items.list(conversation.id)
    assert len(items.data) == 4
