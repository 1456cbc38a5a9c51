"""The protocol the HTTP layer talks to, and the fold of a chunk stream into a result.

The ingress deployment adapts Ray Serve handles to :class:`Backend`; tests and the in-process
server use :class:`deployments.local_backend.LocalBackend` over engines directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Protocol, runtime_checkable

from serve_app.core.internal_types import (
    ChoiceResult,
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ModelStatus,
    Usage,
)


@runtime_checkable
class Backend(Protocol):
    """Where generations and embeddings happen."""

    async def list_models(self) -> list[ModelStatus]:
        """Every configured model with its state and live replica count."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationChunk]]:
        """Stream a chat or completion as batches of chunks, in order.

        A batch holds one chunk or several that arrived together (grouping across the Ray handle
        hop); it is never empty. Errors before the first batch are raised from the first
        ``__anext__``; closing the iterator aborts the generation.
        """
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed every input of the request."""
        ...

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length in tokens as the model's engine renders it (its chat template,
        tools included), without generating."""
        ...

    async def find_adapter(self, model: str, base: str) -> None:
        """404 (``ModelNotFound``) unless ``base``'s replicas have adapter ``model`` (listed or in
        the base's adapter folder, which only they may see); loads nothing."""
        ...

    async def load(self, model: str, keep_alive_s: float | None = None) -> float | None:
        """Load ``model`` if it is not (waiting as a first request would), and keep it loaded for
        ``keep_alive_s`` idle seconds (0: unload now, if it is loaded; negative: for as long as
        allowed). Returns when it unloads if idle (epoch seconds), ``None`` if it never does."""
        ...


def fold_chunks(chunks: Iterable[GenerationChunk]) -> GenerationResult:
    """The complete result a chunk stream describes.

    Non-streaming replies are built with this, so both modes can never disagree. Usage: the
    prompt is counted once, completion tokens are summed over choices.
    """
    choices: dict[int, ChoiceResult] = {}
    prompt_tokens = completion_tokens = cached_tokens = 0
    for chunk in chunks:
        choice = choices.get(chunk.index)
        if choice is None:
            choice = choices[chunk.index] = ChoiceResult(index=chunk.index)
        choice.text += chunk.text
        choice.reasoning += chunk.reasoning
        if chunk.tool_calls:
            choice.tool_calls.extend(chunk.tool_calls)
        if chunk.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + list(chunk.logprobs)
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason
            choice.stop_sequence = chunk.stop_sequence
        if chunk.usage is not None:
            prompt_tokens = max(prompt_tokens, chunk.usage.prompt_tokens)
            cached_tokens = max(cached_tokens, chunk.usage.cached_tokens)
            completion_tokens += chunk.usage.completion_tokens
    ordered = [choices[i] for i in sorted(choices)]
    return GenerationResult(choices=ordered, usage=Usage(prompt_tokens, completion_tokens, cached_tokens))
