"""What both APIs share between their adapters and the backend.

Resolves model names, checks a request against the model's capabilities before any work is
queued, opens streams with the first batch peeked, and folds streams for non-streaming replies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from serve_app.core.backend import Backend, fold_chunks
from serve_app.core.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, ModelUnavailable, Unsupported
from serve_app.core.internal_types import (
    EmbeddingRequest,
    EmbeddingResult,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    ModelCard,
    ModelStatus,
)
from serve_app.core.model_names import ModelResolver
from serve_app.core.observation import current_observer
from serve_app.core.request_limits import RequestLimits
from serve_app.core.streams import collect, peek_first, with_deadline

Batch = list[GenerationChunk]


class Gateway:
    """The API-neutral core of the ingress."""

    def __init__(
        self,
        backend: Backend,
        cards: list[ModelCard],
        *,
        request_deadline_s: float,
        limits: RequestLimits | None = None,
    ) -> None:
        self.backend = backend
        self.request_deadline_s = request_deadline_s
        self.limits = limits or RequestLimits()
        self.cards = {card.name: card for card in cards}
        self.resolver = ModelResolver(cards)

    def card(self, requested_model: str | None) -> ModelCard:
        """The card of the model a client named (any accepted spelling).

        404 if unknown, and likewise if the request's key may not use it (so a key cannot
        probe which models exist). Notes the model with the request's observer.
        """
        name = self.resolver.resolve(requested_model)
        observer = current_observer()
        if observer is not None:
            if not observer.may_use(name):
                raise ModelNotFound(requested_model or "")
            observer.note_model(name)
        card = self.cards.get(name)
        return card if card is not None else self._unlisted_adapter_card(name)

    async def existing_card(self, requested_model: str | None) -> ModelCard:
        """:meth:`card`, and for an adapter from an adapter folder, the base's replicas' word
        that it is there (404 otherwise): what the model-detail routes answer."""
        card = self.card(requested_model)
        if card.base_model is not None and card.name not in self.cards:
            await self.backend.find_adapter(card.name, card.base_model)
        return card

    def _unlisted_adapter_card(self, name: str) -> ModelCard:
        """The card of ``<base>:<adapter>`` from an adapter folder: the base's, renamed."""
        base = self.resolver.unlisted_adapter_base(name)
        if base is None:
            raise ModelNotFound(name)
        return self.cards[base].model_copy(
            update={"name": name, "aliases": [], "base_model": base, "loads_unlisted_adapters": False, "digest": None}
        )

    def _route_to_base(self, request: GenerationRequest) -> None:
        """A request for an adapter goes to its base model's replicas."""
        card = self.cards.get(request.model)
        request.base_model = card.base_model if card is not None else self.resolver.unlisted_adapter_base(request.model)

    # -- checks -----------------------------------------------------------------------------

    @staticmethod
    def check_generation_supported(card: ModelCard, request: GenerationRequest) -> None:
        """Reject, before any work, what this model cannot do."""
        name = card.name
        if card.kind != "generate":
            raise InvalidRequest(f"model '{name}' does not support generate", param="model")
        needs = [
            (request.has_images(), "vision", "images"),
            (bool(request.tools) and request.tool_choice != "none", "tools", "tools"),
            (bool(request.think), "thinking", "thinking"),
            (request.suffix is not None and request.suffix != "", "insert", "insert (suffix)"),
        ]
        for wanted, capability, what in needs:
            if wanted and capability not in card.capabilities:
                raise Unsupported(f"model '{name}' does not support {what}", param="model")

    @staticmethod
    def check_embedding_supported(card: ModelCard, request: EmbeddingRequest) -> None:
        """Reject embedding requests this model cannot serve."""
        if card.kind != "embed":
            raise InvalidRequest(f"model '{card.name}' does not support embeddings", param="model")
        native = card.embedding_dimensions
        dims = request.dimensions
        if dims is not None and dims != native:
            if not card.supports_dimensions:
                raise Unsupported(
                    f"model '{card.name}' has {native} dimensions and does not support "
                    "'dimensions' (it is not a Matryoshka model)",
                    param="dimensions",
                )
            if native is not None and dims > native:
                raise InvalidRequest(
                    f"'dimensions' must be at most {native} for model '{card.name}'", param="dimensions"
                )

    # -- calls ------------------------------------------------------------------------------

    async def open_stream(self, request: GenerationRequest) -> tuple[Batch | None, AsyncIterator[Batch]]:
        """Start a generation and wait for its first batch (errors keep their real status)."""
        return await self.open_stream_from(self.start_generation(request))

    @staticmethod
    async def open_stream_from(stream: AsyncIterator[Batch]) -> tuple[Batch | None, AsyncIterator[Batch]]:
        """Wait for the first batch of an already started stream."""
        first = await peek_first(stream)
        return first, stream

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """The whole generation, folded from the same stream a streamed reply would send."""
        return fold_chunks(await collect(self.start_generation(request)))

    def start_generation(self, request: GenerationRequest) -> AsyncIterator[Batch]:
        """The backend's stream under our generation deadline, observed for the request's metrics."""
        self.limits.check_generation(request)
        self._route_to_base(request)
        request.submitted_at = time.time()
        stream = with_deadline(self.backend.generate(request), self.request_deadline_s)
        observer = current_observer()
        return stream if observer is None else observer.observe(stream)

    async def count_tokens(self, card: ModelCard, request: GenerationRequest) -> int:
        """The prompt's tokens under the model's chat template, after the same checks as a
        generation (a request the model cannot serve is refused here too)."""
        self.check_generation_supported(card, request)
        self.limits.check_generation(request)
        self._route_to_base(request)
        try:
            async with asyncio.timeout(self.request_deadline_s):
                return await self.backend.count_tokens(request)
        except TimeoutError:
            raise DeadlineExceeded(self.request_deadline_s) from None

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """Embed after checking the request against the model's card."""
        self.limits.check_embedding(request)
        result = await self.backend.embed(request)
        observer = current_observer()
        if observer is not None:
            observer.note_prompt_tokens(result.prompt_tokens)
        return result

    async def require_ready(self, model: str) -> None:
        """503 (with ``Retry-After`` while starting) unless ``model`` has a ready replica or loads
        on demand (a model that scales to zero: the request itself loads it)."""
        for status in await self.model_statuses():
            if status.card.name != model:
                continue
            if status.state == "failed":
                # The reason (paths, exceptions) is in the replica's log, not for clients.
                raise ModelUnavailable(f"model '{model}' failed to start; the reason is in the server log")
            if status.state == "starting" and not status.on_demand:
                raise ModelUnavailable(f"model '{model}' is starting", headers={"retry-after": "10"})
            return

    async def load(self, model: str, keep_alive_s: float | None) -> float | None:
        """Load ``model`` (or, with ``keep_alive_s`` 0, unload it); when it unloads if idle."""
        await self.require_ready(model)
        # An adapter is loaded with its base (its own load happens on its first generation).
        card = self.cards.get(model)
        base = card.base_model if card is not None else self.resolver.unlisted_adapter_base(model)
        return await self.backend.load(base or model, keep_alive_s)

    async def model_statuses(self) -> list[ModelStatus]:
        """Every configured model with its state (those the request's key may use)."""
        statuses = self._with_adapters(await self.backend.list_models())
        observer = current_observer()
        if observer is not None:
            statuses = [s for s in statuses if observer.may_use(s.card.name)]
        return statuses

    def _with_adapters(self, statuses: list[ModelStatus]) -> list[ModelStatus]:
        """The backend's statuses (base models) and, after each base, its listed adapters in
        the same state: they are served by the base's replicas."""
        adapters: dict[str, list[ModelCard]] = {}
        for card in self.cards.values():
            if card.base_model is not None:
                adapters.setdefault(card.base_model, []).append(card)
        if not adapters:
            return statuses
        listed: list[ModelStatus] = []
        for status in statuses:
            listed.append(status)
            listed.extend(status.model_copy(update={"card": card}) for card in adapters.get(status.card.name, ()))
        return listed
