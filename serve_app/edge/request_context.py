"""What the ingress learns about one request while serving it, for metrics, logs and limits.

The edge creates a :class:`RequestContext` per request and makes it the current
:class:`~serve_app.core.observation.RequestObserver` for the request's task; the gateway fills in
the model, token counts and token times through that protocol as chunks pass; the edge
finalizes it once, after the response is fully sent or the client went away.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from serve_app.core.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    Overloaded,
    RateLimited,
    ServingError,
)
from serve_app.core.internal_types import GenerationChunk
from serve_app.edge.keys import ApiKey

Batch = list[GenerationChunk]

Outcome = str  # ok | error | rate_limited | shed | deadline | disconnected


@dataclass(slots=True)
class RequestContext:
    """Per-request accounting; times are ``time.monotonic()`` seconds."""

    request_id: str
    api: str
    method: str
    path: str
    started: float = field(default_factory=time.monotonic)
    key: ApiKey | None = None
    lease: str | None = None  # the limiter's concurrency slot, released once at the end
    route: str = "unmatched"
    model: str = ""
    status: int | None = None
    response_complete: bool = False
    error: BaseException | None = None
    rejected_limit: str | None = None  # which key limit refused the request
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queued_s: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    token_gaps: list[float] = field(default_factory=list)
    token_chunks: int = 0  # chunks that carried output (an estimate when usage never came)
    finished_at: float | None = None

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key is not None else None

    @property
    def ttft_s(self) -> float | None:
        """Seconds from arrival to the first generated token (None when none came)."""
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def duration_s(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started

    # -- the gateway's RequestObserver protocol ------------------------------------------------

    def may_use(self, model: str) -> bool:
        """Whether the request's key (if any) may use the canonical ``model``."""
        return self.key is None or self.key.may_use(model)

    def note_model(self, model: str) -> None:
        """The model the request resolved to (a metric label and a usage field)."""
        self.model = model

    def note_prompt_tokens(self, tokens: int) -> None:
        """Prompt tokens counted outside a stream (embeddings)."""
        self.prompt_tokens += tokens

    def observe(self, stream: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
        """``stream`` with its token times, usage and failure written into this context."""
        return observed(stream, self)

    def record_error(self, error: BaseException) -> None:
        """Remember the first failure (the one that decided the reply)."""
        if self.error is None:
            self.error = error

    @property
    def in_band(self) -> bool:
        """Whether the failure came after a 200 had been sent (an in-band error frame)."""
        return self.error is not None and self.status == 200

    def observe_batch(self, batch: Batch, now: float) -> None:
        """Token times of one batch; a batch of k tokens spreads its gap over the k tokens."""
        tokens = sum(1 for c in batch if c.text or c.reasoning or c.tool_calls)
        for chunk in batch:
            if chunk.queued_s is not None and self.queued_s is None:
                self.queued_s = chunk.queued_s
        if not tokens:
            return
        self.token_chunks += tokens
        if self.first_token_at is None:
            self.first_token_at = now
            tokens -= 1
            if tokens:
                self.token_gaps.extend([0.0] * tokens)
        elif self.last_token_at is not None:
            gap = (now - self.last_token_at) / tokens
            self.token_gaps.extend([gap] * tokens)
        self.last_token_at = now

    def settle_counts(self) -> None:
        """A stream cut short never delivered its usage: count the output chunks that were sent."""
        if self.completion_tokens == 0 and self.token_chunks:
            self.completion_tokens = self.token_chunks

    def outcome(self) -> Outcome:
        """How the request ended, for metrics and the usage line."""
        error = self.error
        if self.rejected_limit is not None:
            return "rate_limited"
        if isinstance(error, DeadlineExceeded):
            return "deadline"
        if isinstance(error, Overloaded):
            return "shed"
        if isinstance(error, ClientDisconnected) or (self.status is not None and not self.response_complete):
            return "disconnected"
        if self.status is None:
            return "disconnected"
        if isinstance(error, RateLimited):
            return "rate_limited"
        if error is not None or self.status >= 400:
            return "error"
        return "ok"

    def error_code(self) -> str | None:
        """The error's code (``rate_limit_exceeded``...) when it was one of ours."""
        if isinstance(self.error, ServingError):
            return self.error.code
        return None if self.error is None else "internal_error"


async def observed(stream: AsyncIterator[Batch], ctx: RequestContext | None) -> AsyncIterator[Batch]:
    """``stream`` unchanged, with its token times, usage and failure written into ``ctx``."""
    if ctx is None:
        async for batch in stream:
            yield batch
        return
    prompt = 0
    try:
        async for batch in stream:
            ctx.observe_batch(batch, time.monotonic())
            for chunk in batch:
                if chunk.usage is not None:
                    # The prompt counts once per generation; completions add up over choices.
                    if chunk.usage.prompt_tokens > prompt:
                        ctx.prompt_tokens += chunk.usage.prompt_tokens - prompt
                        prompt = chunk.usage.prompt_tokens
                    ctx.completion_tokens += chunk.usage.completion_tokens
            yield batch
    except Exception as exc:
        ctx.record_error(exc)
        raise
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


def timing_headers(ctx: RequestContext | None, streamed: bool) -> dict[str, str]:
    """``x-queue-time-ms`` (and, once the reply is whole, ``x-time-to-first-token-ms``)."""
    if ctx is None:
        return {}
    headers = {}
    if ctx.queued_s is not None:
        headers["x-queue-time-ms"] = f"{max(ctx.queued_s, 0.0) * 1000:.1f}"
    if not streamed and ctx.ttft_s is not None:
        headers["x-time-to-first-token-ms"] = f"{ctx.ttft_s * 1000:.1f}"
    return headers
