"""How the gateway reports what it learns about a request, without knowing who listens.

The edge (``serve_app.edge``) keeps per-request accounting: key limits, metrics, the usage line.
The gateway sits below it and must not import it, so it talks to a :class:`RequestObserver`
made current for the request's task; the edge's request context implements the protocol. With
no observer current (a direct call, a test), the gateway behaves the same and reports nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextvars import ContextVar, Token
from typing import Protocol, runtime_checkable

from serve_app.core.internal_types import GenerationChunk

Batch = list[GenerationChunk]


@runtime_checkable
class RequestObserver(Protocol):
    """What the gateway tells, and asks, the layer that accounts for the current request."""

    def may_use(self, model: str) -> bool:
        """Whether the request's caller may use ``model`` (its key's allowed models)."""
        ...

    def note_model(self, model: str) -> None:
        """The canonical model the request was resolved to."""
        ...

    def note_prompt_tokens(self, tokens: int) -> None:
        """Prompt tokens processed outside a generation stream (embeddings)."""
        ...

    def observe(self, stream: AsyncIterator[Batch]) -> AsyncIterator[Batch]:
        """``stream`` unchanged, with its token times, usage and failure recorded."""
        ...


_current: ContextVar[RequestObserver | None] = ContextVar("serve_app_request_observer", default=None)


def current_observer() -> RequestObserver | None:
    """The observer of the request this task serves, if any."""
    return _current.get()


def set_observer(observer: RequestObserver | None) -> Token[RequestObserver | None]:
    """Make ``observer`` current for this task; returns the token to :func:`reset_observer` with."""
    return _current.set(observer)


def reset_observer(token: Token[RequestObserver | None]) -> None:
    """Undo :func:`set_observer`."""
    _current.reset(token)
