"""The Serve graph from config.fake.yaml, driven by the real openai and ollama clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from tests.integration.harness import deploy, fake_config_args, local_ray

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def graph_url() -> Iterator[str]:
    with local_ray() as port:
        args = fake_config_args()
        for model in args["models"]:
            if model.get("engine") == "fake" and model.get("kind", "generate") == "generate":
                model["engine_args"] = {"token_interval_s": 0.005, "output_tokens": 16}
        deploy(args)
        yield f"http://127.0.0.1:{port}"


def test_openai_and_ollama_stream_two_models_and_embeddings_at_once(graph_url: str) -> None:
    async def openai_stream(model: str) -> str:
        client = openai.AsyncOpenAI(base_url=f"{graph_url}/v1", api_key="unused")
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert usage is not None and usage.completion_tokens == 16
        return text

    async def ollama_stream(model: str) -> str:
        client = ollama.AsyncClient(host=graph_url)
        text, final = "", None
        async for part in await client.chat(model=model, messages=[{"role": "user", "content": "hi"}], stream=True):
            text += part.message.content or ""
            if part.done:
                final = part
        assert final is not None and final.done_reason == "stop" and final.eval_count == 16
        return text

    async def embed() -> list[list[float]]:
        client = openai.AsyncOpenAI(base_url=f"{graph_url}/v1", api_key="unused")
        result = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        return [d.embedding for d in result.data]

    async def main() -> list[object]:
        return await asyncio.gather(
            openai_stream("gpt-4o-mini"),
            openai_stream("qwen2.5:0.5b"),
            ollama_stream("smollm2:135m"),
            ollama_stream("gpt-4o"),
            embed(),
        )

    results = asyncio.run(main())
    expected = "".join(f"tok{i} " for i in range(16))
    assert results[:4] == [expected] * 4
    vectors = results[4]
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)


def test_models_tags_and_ps_show_replicas_and_state(graph_url: str) -> None:
    models = openai.OpenAI(base_url=f"{graph_url}/v1", api_key="unused").models.list()
    assert {m.id for m in models.data} == {"smollm2:135m", "qwen2.5:0.5b", "all-minilm:l6-v2"}
    assert all(m.model_extra["state"] == "ready" for m in models.data)
    tags = httpx.get(f"{graph_url}/api/tags").json()
    assert {m["state"] for m in tags["models"]} == {"ready"}
    ps = ollama.Client(host=graph_url).ps()
    assert {m.model for m in ps.models} == {"smollm2:135m", "qwen2.5:0.5b", "all-minilm:l6-v2"}
    raw = httpx.get(f"{graph_url}/api/ps").json()
    assert all(m["replicas"] == 1 for m in raw["models"])


def test_errors_cross_the_handle_with_their_status(graph_url: str) -> None:
    client = openai.OpenAI(base_url=f"{graph_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert excinfo.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    # Ollama fits an over-long prompt by default; with truncate false it refuses it.
    refused = httpx.post(f"{graph_url}/api/generate", json={"model": "smollm2", "prompt": "word " * 3000, "truncate": False})
    assert refused.status_code == 400 and "exceeds the context length" in refused.json()["error"]
    fitted = ollama.Client(host=graph_url).generate(model="smollm2", prompt="word " * 3000)
    assert fitted.done and fitted.prompt_eval_count < 3000
