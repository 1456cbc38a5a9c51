"""A deterministic engine for tests, benchmarks of the serving layer, and laptops.

Token ``i`` of every choice is ``"tok{i} "``. It sleeps ``token_interval_s`` per token, counts
starts, aborts and in-flight requests, and can be told to fail. Structured output requests get
valid JSON (an instance built from the schema), tool choices get a tool call, and ``think``
gets a few reasoning tokens, so every field of both APIs can be exercised without a model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from deployments.engines.adapters import AdapterCache, AdapterCatalog, find_adapter
from deployments.engines.context_fit import fit_messages, fitted_max_tokens, output_reserve
from serve_app.core.errors import ContextLengthExceeded, EngineError, InvalidRequest
from serve_app.core.internal_types import (
    ChatMessage,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)


class FakeEngineConfig(BaseModel):
    """Knobs of the fake engine (``engine_args`` of a ``kind: fake`` model)."""

    model_config = ConfigDict(extra="forbid")

    token_interval_s: float = 0.0
    output_tokens: int = 8  # natural length of an answer when max_tokens allows it
    startup_delay_s: float = 0.0
    fail_on_start: bool = False
    fail_after_tokens: int | None = None  # raise after this many tokens; 0 fails before any
    die_after_requests: int | None = None  # the engine dies (check_health fails) after N requests
    # A prefix cache like vLLM's, so routing can be tested: prompts are cut into blocks of
    # ``cache_block_tokens`` (fake) tokens, held in LRU order up to ``prefix_cache_tokens``;
    # the first token waits ``prefill_s_per_token`` for every prompt token not in the cache.
    prefix_cache_tokens: int = 0
    cache_block_tokens: int = 16
    prefill_s_per_token: float = 0.0
    # LoRA adapters: loading one takes this long; the base has these modules (what an
    # adapter's target_modules may name, as a Llama model's attention and MLP projections).
    adapter_load_s: float = 0.0
    lora_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def count_words(text: str) -> int:
    """The fake tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def example_from_schema(schema: dict[str, Any]) -> Any:
    """A small instance that validates against a (simple) JSON schema."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema and schema[key]:
            return example_from_schema(schema[key][0])
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {name: example_from_schema(sub) for name, sub in props.items()}
    if kind == "array":
        count = max(int(schema.get("minItems", 1)), 1)
        return [example_from_schema(schema.get("items", {"type": "string"}))] * count
    if kind == "string":
        return "tok0" + "x" * max(int(schema.get("minLength", 0)) - 4, 0)
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    return None


class FakePrefixCache:
    """Blocks of prompt tokens in LRU order, as vLLM's prefix cache keeps them."""

    def __init__(self, capacity_tokens: int, block_tokens: int) -> None:
        self.capacity_blocks = capacity_tokens // max(block_tokens, 1)
        self.block_tokens = max(block_tokens, 1)
        self.blocks: OrderedDict[str, None] = OrderedDict()
        self.queries = 0
        self.hits = 0

    def use(self, tokens: list[str]) -> int:
        """Prefix tokens of ``tokens`` already cached; the prompt's full blocks are cached after."""
        digest = hashlib.sha256()
        keys = []
        for start in range(0, len(tokens) - self.block_tokens + 1, self.block_tokens):
            digest.update("\0".join(tokens[start : start + self.block_tokens]).encode())
            keys.append(digest.hexdigest())
        matched = 0
        for key in keys:
            if key not in self.blocks:
                break
            matched += 1
        for key in reversed(keys):
            self.blocks[key] = None
            self.blocks.move_to_end(key)
        while len(self.blocks) > self.capacity_blocks:
            self.blocks.popitem(last=False)
        hit = matched * self.block_tokens
        self.queries += len(tokens)
        self.hits += hit
        return hit


class FakeEngine:
    """Implements :class:`deployments.engines.base.Engine` deterministically."""

    def __init__(
        self, card: ModelCard, config: FakeEngineConfig | None = None, adapters: AdapterCatalog | None = None
    ) -> None:
        self.card = card
        self.config = config or FakeEngineConfig()
        self.catalog = adapters
        self.adapters = AdapterCache(
            adapters.limits.capacity if adapters else 1, self._load_adapter, self._unload_adapter
        )
        self.starts = 0
        self.aborted: list[str] = []
        self.in_flight: set[str] = set()
        self.completed = 0
        self.tokens_generated = 0
        self.dead = False
        self._requests_seen = 0
        # The last requests as the engine received them (what tests inspect: the turns a
        # stateful API rebuilt, the fields an adapter set).
        self.recent_requests: deque[GenerationRequest] = deque(maxlen=32)
        self.prefix_cache = FakePrefixCache(self.config.prefix_cache_tokens, self.config.cache_block_tokens)

    async def start(self) -> None:
        self.starts += 1
        if self.config.startup_delay_s:
            await asyncio.sleep(self.config.startup_delay_s)
        if self.config.fail_on_start:
            raise EngineError(f"fake engine for {self.card.name} was told to fail on start")

    async def check_health(self) -> None:
        if self.dead:
            raise EngineError(f"fake engine for {self.card.name} is dead")

    async def shutdown(self) -> None:
        self.dead = True

    async def abort(self, request_id: str) -> None:
        if request_id in self.in_flight:
            self.in_flight.discard(request_id)
            self.aborted.append(request_id)

    # -- adapters ---------------------------------------------------------------------------

    async def load_adapter(self, name: str) -> None:
        """Hold adapter ``name`` (loading it once however many ask): as vLLM's ``add_lora``."""
        await self.adapters.get(name)

    async def unload_adapter(self, name: str) -> None:
        await self.adapters.evict(name)

    async def find_adapter(self, name: str) -> None:
        find_adapter(self.catalog, name)

    async def _load_adapter(self, name: str) -> str:
        if self.catalog is None:
            raise InvalidRequest(f"model '{self.card.name}' serves no adapters", param="model")
        location = self.catalog.locate(name)
        self.catalog.check(name, location, frozenset(self.config.lora_modules))
        if self.config.adapter_load_s:
            await asyncio.sleep(self.config.adapter_load_s)
        return location

    async def _unload_adapter(self, name: str) -> None:
        return None

    # -- generation -------------------------------------------------------------------------

    def prompt_tokens(self, request: GenerationRequest) -> int:
        """Prompt length under the fake tokenizer (one token per word, one per message role)."""
        if request.kind == "completion":
            prompt = request.prompt
            return len(prompt) if isinstance(prompt, list) else count_words(prompt or "")
        return sum(1 + count_words(m.text()) for m in request.messages)

    def prompt_token_list(self, request: GenerationRequest) -> list[str]:
        """The prompt's fake tokens in the order a chat template renders them (tools, roles, words)."""
        if request.kind == "completion":
            prompt = request.prompt
            return [str(t) for t in prompt] if isinstance(prompt, list) else (prompt or "").split()
        tokens = [json.dumps([t.model_dump() for t in request.tools], sort_keys=True)] if request.tools else []
        for message in request.messages:
            tokens.append(f"<|{message.role}|>")
            tokens.extend(message.text().split())
        return tokens

    def routing_stats(self) -> dict[str, Any]:
        """What a cache-aware router reads: KV capacity and the prefix cache's own counters."""
        return {
            "kv_capacity_tokens": self.config.prefix_cache_tokens,
            "prefix_cache_queries": self.prefix_cache.queries,
            "prefix_cache_hits": self.prefix_cache.hits,
        }

    def _limit(self, request: GenerationRequest) -> int:
        limit = self.card.context_length
        return limit if request.context_limit is None else min(limit, request.context_limit)

    async def _fit(self, request: GenerationRequest) -> tuple[GenerationRequest, int]:
        """The request fitted into the context by Ollama's rules (``context_fit``), and its length."""
        fit = request.context_fit
        prompt_tokens = self.prompt_tokens(request)
        if fit is None:
            return request, prompt_tokens
        limit = self._limit(request)
        update: dict[str, Any] = {}
        if fit.truncate:
            budget = limit - output_reserve(fit, request.sampling.max_tokens, limit)
            if prompt_tokens >= limit and request.kind == "chat":

                async def count(messages: list[ChatMessage]) -> int:
                    return self.prompt_tokens(request.model_copy(update={"messages": messages}))

                update["messages"] = await fit_messages(request.messages, count, budget)
                prompt_tokens = await count(update["messages"])
            if prompt_tokens >= limit:
                prompt_tokens = min(prompt_tokens, budget)  # the rest is cut from the middle
        if prompt_tokens < limit:
            wanted = fitted_max_tokens(request.sampling.max_tokens, prompt_tokens, limit)
            update["sampling"] = request.sampling.model_copy(update={"max_tokens": wanted})
        return request.model_copy(update=update), prompt_tokens

    def _check_context(self, request: GenerationRequest, prompt_tokens: int) -> None:
        limit = self._limit(request)
        wanted = request.sampling.max_tokens or 0
        if prompt_tokens >= limit or prompt_tokens + wanted > limit:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the messages, {wanted} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="messages" if request.kind == "chat" else "prompt",
            )

    def _answer_pieces(self, request: GenerationRequest) -> list[str]:
        fmt = request.response_format
        if fmt.type == "json_object":
            text = json.dumps({"answer": "tok0"})
        elif fmt.type == "json_schema":
            text = json.dumps(example_from_schema(fmt.json_schema or {}))
        else:
            count = self.config.output_tokens
            if request.sampling.ignore_eos and request.sampling.max_tokens:
                count = request.sampling.max_tokens  # no natural end: exactly max_tokens
            # An adapter changes the answer, as a fine-tune does: its tokens carry its name.
            tag = f"{_adapter_tag(request.model, request.base_model)}-" if request.base_model else ""
            return [f"{tag}tok{i} " for i in range(count)]
        # Structured answers stream a few characters per token, like a real tokenizer.
        return [text[i : i + 4] for i in range(0, len(text), 4)]

    def _tool_to_call(self, request: GenerationRequest) -> str | None:
        if not request.tools or request.tool_choice == "none":
            return None
        names = [t.name for t in request.tools]
        if request.tool_choice in names:
            return request.tool_choice
        if request.tool_choice == "required":
            return names[0]
        if request.messages and request.messages[-1].role == "tool":
            return None  # a tool's result came back: answer it, as a model would
        last_user = next((m.text() for m in reversed(request.messages) if m.role == "user"), "")
        return next((n for n in names if n in last_user), None)

    def _logprobs(self, token: str, request: GenerationRequest) -> list[TokenLogprob] | None:
        if not request.sampling.logprobs:
            return None
        top = [
            TokenLogprob(token=t, logprob=lp, bytes=list(t.encode()))
            for t, lp in ((token, -0.25), ("alt ", -1.75), ("other ", -2.5))
        ][: request.sampling.top_logprobs or 0]
        return [TokenLogprob(token=token, logprob=-0.25, bytes=list(token.encode()), top_logprobs=top)]

    async def _choice(
        self, index: int, request: GenerationRequest, prompt_tokens: int, cached: int = 0
    ) -> AsyncIterator[GenerationChunk]:
        tool = self._tool_to_call(request)
        if tool is not None:
            call = ToolCallDelta(0, f"call_{uuid.uuid4().hex[:24]}", tool, json.dumps({"arg": "tok0"}))
            self.tokens_generated += 1
            yield GenerationChunk(index, tool_calls=[call], finish_reason="tool_calls",
                                  usage=Usage(prompt_tokens, 1, cached))
            return
        produced = 0
        if request.think:
            for i in range(3):
                await self._tick(request, produced)
                produced += 1
                yield GenerationChunk(index, reasoning=f"think{i} ")
        pieces = self._answer_pieces(request)
        budget = request.sampling.max_tokens
        text_so_far = ""
        for i, piece in enumerate(pieces):
            if budget is not None and i >= budget:
                yield GenerationChunk(index, finish_reason="length", usage=Usage(prompt_tokens, produced, cached))
                return
            await self._tick(request, produced)
            produced += 1
            stop_at = self._stop_position(text_so_far + piece, request.sampling.stop)
            if stop_at is not None:
                cut = (text_so_far + piece)[:stop_at][len(text_so_far) :]
                matched = min((s for s in request.sampling.stop if s and (text_so_far + piece).find(s) == stop_at), key=len)
                yield GenerationChunk(index, text=cut, finish_reason="stop", stop_sequence=matched,
                                      usage=Usage(prompt_tokens, produced, cached))
                return
            text_so_far += piece
            last = i == len(pieces) - 1
            yield GenerationChunk(
                index,
                text=piece,
                logprobs=self._logprobs(piece, request),
                finish_reason="stop" if last else None,
                usage=Usage(prompt_tokens, produced, cached) if last else None,
            )

    @staticmethod
    def _stop_position(text: str, stops: list[str]) -> int | None:
        hits = [text.find(s) for s in stops if s and s in text]
        return min(hits) if hits else None

    async def _tick(self, request: GenerationRequest, produced: int) -> None:
        fail_after = self.config.fail_after_tokens
        if fail_after is not None and produced >= fail_after:
            raise EngineError(f"fake engine was told to fail after {fail_after} tokens")
        if self.config.token_interval_s:
            await asyncio.sleep(self.config.token_interval_s)
        else:
            await asyncio.sleep(0)
        self.tokens_generated += 1

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self.card.kind != "generate":
            raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")
        await self.check_health()
        if request.base_model is not None:
            await self.load_adapter(request.model)
        self.recent_requests.append(request)
        request, prompt_tokens = await self._fit(request)
        self._check_context(request, prompt_tokens)
        if self.config.fail_after_tokens == 0:
            raise EngineError("fake engine was told to fail before the first token")
        rid = request.request_id
        self.in_flight.add(rid)
        finished = False
        try:
            cached = 0
            if self.config.prefix_cache_tokens:
                cached = min(self.prefix_cache.use(self.prompt_token_list(request)), prompt_tokens)
            if self.config.prefill_s_per_token:
                await asyncio.sleep((prompt_tokens - cached) * self.config.prefill_s_per_token)
            streams = [self._choice(i, request, prompt_tokens, cached) for i in range(request.sampling.n)]
            first = True
            # Round-robin over choices, as a batching engine interleaves them.
            while streams:
                for stream in list(streams):
                    try:
                        chunk = await stream.__anext__()
                    except StopAsyncIteration:
                        streams.remove(stream)
                        continue
                    if first:
                        chunk.prompt_tokens, first = prompt_tokens, False
                    yield chunk
            finished = True
            self.completed += 1
        finally:
            self._requests_seen += 1
            if self.config.die_after_requests is not None and self._requests_seen >= self.config.die_after_requests:
                self.dead = True
            if not finished:
                await self.abort(rid)
            self.in_flight.discard(rid)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length under the fake tokenizer, as a generation's usage reports it."""
        if self.card.kind != "generate":
            raise InvalidRequest(f"model '{self.card.name}' does not support generate", param="model")
        await self.check_health()
        if request.base_model is not None:
            await self.load_adapter(request.model)
        self.recent_requests.append(request)
        return self.prompt_tokens(request)

    # -- embeddings -------------------------------------------------------------------------

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        if self.card.kind != "embed":
            raise InvalidRequest(f"model '{self.card.name}' does not support embeddings", param="model")
        await self.check_health()
        texts = [" ".join(map(str, x)) if isinstance(x, list) else x for x in request.inputs]
        limit = self.card.context_length
        token_counts = []
        for text in texts:
            count = count_words(text)
            if count > limit and not request.truncate:
                raise ContextLengthExceeded(
                    f"input of {count} tokens exceeds the model's context length of {limit}",
                    param="input",
                )
            token_counts.append(min(count, limit))
        dims = request.dimensions or self.card.embedding_dimensions or 384
        return EmbeddingResult(vectors=[_unit_vector(t, dims) for t in texts], prompt_tokens=sum(token_counts))


def _adapter_tag(adapter: str, base: str) -> str:
    """A short name for an adapter's answers: ``sailor`` for ``base:sailor``, else the name
    before its tag (``smollm2-pirate`` for ``smollm2-pirate:135m``)."""
    return adapter[len(base) + 1 :] if adapter.startswith(f"{base}:") else adapter.split(":")[0]


def _unit_vector(text: str, dims: int) -> list[float]:
    """A deterministic pseudo-random unit vector for ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]
