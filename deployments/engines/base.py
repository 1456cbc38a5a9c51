"""The protocol every engine implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    ModelCard,
)


@runtime_checkable
class Engine(Protocol):
    """A model runtime: one per LLM or embedding replica."""

    card: ModelCard

    async def start(self) -> None:
        """Load the model; raise if it cannot serve."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve (Serve then replaces the replica)."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks for ``request``.

        Raises :class:`serve_app.core.errors.ServingError` subclasses for bad requests (before
        any chunk) and engine failures. Closing the iterator early aborts the request.
        """
        ...

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed every input of ``request``."""
        ...

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's length in tokens as ``generate`` would render it (chat template, tools),
        without generating; the same errors as ``generate`` for a request it cannot take."""
        ...

    async def load_adapter(self, name: str) -> None:
        """Hold LoRA adapter ``name`` of this model, loading it once however many requests ask
        (evicting the least recently used beyond the limit); a request whose ``base_model`` is
        set loads its adapter this way. 404 for an adapter this model does not have; 400
        (``AdapterLoadFailed``) for one it cannot take."""
        ...

    async def unload_adapter(self, name: str) -> None:
        """Let adapter ``name`` go (a no-op when it is not held)."""
        ...

    async def find_adapter(self, name: str) -> None:
        """404 for an adapter this model does not have (listed or in its folder); loads nothing,
        so ``/api/show`` and ``/v1/models/{id}`` can tell without taking an adapter slot."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stop generating for ``request_id``; a no-op when it already finished."""
        ...

    async def shutdown(self) -> None:
        """Release the model."""
        ...
