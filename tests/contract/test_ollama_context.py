"""Prompts and outputs longer than the context, on the Ollama API (its rules) and the OpenAI API (400).

The fake chat model has a 64-token context; its tokenizer counts one token per word plus one per
message. Ollama (0.12.6+) keeps every system message and the last message, drops the oldest of
the rest, and with ``truncate: false`` answers 400 "the input length exceeds the context length".
With ``shift`` (the default) it would go on generating past the context; we leave a quarter of
the context for the answer instead, and with ``shift: false`` only what the prompt leaves.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CHAT_MODEL

LIMIT = 64
SYSTEM = {"role": "system", "content": "be brief"}  # 3 tokens
LAST = {"role": "user", "content": "hello there"}  # 3 tokens


def history(turns: int) -> list[dict[str, str]]:
    """``turns`` messages of 11 tokens each, alternating user and assistant."""
    return [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(f"w{i}x{j}" for j in range(10))}
        for i in range(turns)
    ]


def long_chat() -> list[dict[str, str]]:
    return [SYSTEM, *history(10), LAST]  # 3 + 110 + 3 tokens: far over 64


def chat(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/api/chat", json={"model": CHAT_MODEL, "stream": False, **body}, timeout=10)


def test_over_long_chat_keeps_system_and_newest_messages(shared_live_url: str) -> None:
    reply = chat(shared_live_url, {"messages": long_chat()})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    # Budget 64 - 16 (a quarter left for the answer) = 48: system 3 + last 3 + the 3 newest (33).
    assert body["prompt_eval_count"] == 3 + 3 + 3 * 11
    assert body["message"]["content"] and body["done"] is True


def test_a_prompt_that_fits_is_never_cut(shared_live_url: str) -> None:
    """55 tokens fit the 64 (though they leave less than a quarter for the answer): untouched."""
    messages = [SYSTEM, *history(4), {"role": "user", "content": "word " * 7}]  # 3 + 44 + 8
    body = chat(shared_live_url, {"messages": messages}).json()
    assert body["prompt_eval_count"] == 55 and body["eval_count"] <= LIMIT - 55


def test_a_system_message_in_the_dropped_part_is_kept(shared_live_url: str) -> None:
    messages = [*history(4), {"role": "system", "content": "mid system note"}, *history(6), LAST]
    body = chat(shared_live_url, {"messages": messages}).json()
    assert body["prompt_eval_count"] == 4 + 3 + 3 * 11  # the 4-token system message survives


def test_shift_false_leaves_only_what_the_prompt_leaves(shared_live_url: str) -> None:
    body = chat(shared_live_url, {"messages": long_chat(), "shift": False}).json()
    # Budget 63 (one token of output): system 3 + last 3 + the 5 newest (55) = 61.
    assert body["prompt_eval_count"] == 61
    assert body["eval_count"] == LIMIT - 61 and body["done_reason"] == "length"


def test_truncate_false_is_ollamas_400(shared_live_url: str) -> None:
    reply = chat(shared_live_url, {"messages": long_chat(), "truncate": False})
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("the input length exceeds the context length")
    streamed = httpx.post(
        f"{shared_live_url}/api/chat",
        json={"model": CHAT_MODEL, "messages": long_chat(), "truncate": False}, timeout=10,
    )
    assert streamed.status_code == 400  # refused before the first byte, as Ollama does
    assert "exceeds the context length" in streamed.json()["error"]


def test_truncate_false_still_fits_the_output(shared_live_url: str) -> None:
    """A prompt that fits is never refused for its num_predict: the output stops at the context."""
    near_full = {"role": "user", "content": "word " * 59}  # 60 tokens: room for 4 of the 8 the model says
    reply = chat(shared_live_url, {"messages": [near_full], "truncate": False, "options": {"num_predict": 500}})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["prompt_eval_count"] == 60
    assert body["done_reason"] == "length" and body["eval_count"] == LIMIT - 60


def test_one_message_over_the_context_is_cut_to_fit(shared_live_url: str) -> None:
    huge = {"role": "user", "content": "word " * 200}
    body = chat(shared_live_url, {"messages": [huge]}).json()
    assert body["prompt_eval_count"] == LIMIT - LIMIT // 4


def test_num_predict_sets_the_room_left_for_the_answer(shared_live_url: str) -> None:
    body = chat(shared_live_url, {"messages": long_chat(), "options": {"num_predict": 30}}).json()
    # Budget 64 - 30 = 34: system 3 + last 3 + the 2 newest (22) = 28.
    assert body["prompt_eval_count"] == 28


def test_generate_follows_the_same_rules(shared_live_url: str) -> None:
    long_prompt = "word " * 200
    ok = httpx.post(f"{shared_live_url}/api/generate", json={"model": CHAT_MODEL, "prompt": long_prompt, "stream": False})
    assert ok.status_code == 200 and ok.json()["prompt_eval_count"] <= LIMIT
    refused = httpx.post(
        f"{shared_live_url}/api/generate",
        json={"model": CHAT_MODEL, "prompt": long_prompt, "stream": False, "truncate": False},
    )
    assert refused.status_code == 400 and "exceeds the context length" in refused.json()["error"]


def test_num_ctx_caps_the_context(shared_live_url: str) -> None:
    body = chat(shared_live_url, {"messages": long_chat(), "options": {"num_ctx": 32}}).json()
    # Budget 32 - 8 = 24: system 3 + last 3 + the newest (11) = 17.
    assert body["prompt_eval_count"] == 17
    refused = chat(shared_live_url, {"messages": long_chat(), "options": {"num_ctx": 32}, "truncate": False})
    assert refused.status_code == 400


def test_streamed_over_long_chat_answers_in_ndjson(shared_live_url: str) -> None:
    with httpx.stream("POST", f"{shared_live_url}/api/chat", json={"model": CHAT_MODEL, "messages": long_chat()}) as reply:
        assert reply.status_code == 200
        lines = [json.loads(line) for line in reply.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] == 39


def test_openai_keeps_its_400(shared_live_url: str) -> None:
    client = openai.OpenAI(base_url=f"{shared_live_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=CHAT_MODEL, messages=long_chat())  # type: ignore[arg-type]
    assert info.value.code == "context_length_exceeded"
