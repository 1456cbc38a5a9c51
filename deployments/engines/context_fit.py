"""Fitting a generation into the context, by Ollama's rules (``ContextFit`` on the request).

Shared by the engines; pure functions over a token counter, so the rules are tested without a
model. Ollama (0.12, ``server/prompt.go`` and its runners) does it in two stages:

1. Messages: keep the longest run of most recent messages that fits, every system message from
   the dropped part (moved to the front, in order) and always the last message.
2. Tokens: if that is still too long, keep the first ``keep_tokens`` tokens and drop tokens from
   the middle, so the end of the prompt (the question, the generation prompt) survives.

A prompt that fits the context is never cut. Ollama then shifts the context while generating;
vLLM cannot, so when a prompt has to be cut, room is left for the output (:func:`output_reserve`),
and output beyond the context is cut with finish "length" (:func:`fitted_max_tokens`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from serve_app.core.internal_types import ChatMessage, ContextFit

# Without num_predict, a cut prompt leaves this share of the context for the answer.
DEFAULT_OUTPUT_SHARE = 4


def output_reserve(fit: ContextFit, max_tokens: int | None, limit: int) -> int:
    """Tokens kept free for the output when the prompt must be cut to fit ``limit``."""
    if not fit.shift:
        return 1  # no shift: the output stops where the context is full, as Ollama's does
    wanted = max_tokens if max_tokens is not None else limit // DEFAULT_OUTPUT_SHARE
    return max(1, min(wanted, limit // 2))


def kept_messages(messages: Sequence[ChatMessage], start: int) -> list[ChatMessage]:
    """The messages kept when those before ``start`` are dropped: their system messages first."""
    dropped_system = [m for m in messages[:start] if m.role == "system"]
    return dropped_system + list(messages[start:])


async def fit_messages(
    messages: Sequence[ChatMessage],
    prompt_tokens: Callable[[list[ChatMessage]], Awaitable[int | None]],
    budget: int,
) -> list[ChatMessage]:
    """The messages Ollama keeps for a prompt of at most ``budget`` tokens.

    ``prompt_tokens`` renders and counts a candidate list (``None``: too long to count). Dropping
    more messages never makes the prompt longer, so the first kept message is found by bisection
    (a few renders, not one per message). When even the last message with the system messages
    does not fit, that is what is returned; the caller then cuts tokens.
    """
    last = len(messages) - 1
    low, high = 0, last  # the answer lies in [low, high]; `high` (only the last) is the fallback
    while low < high:
        middle = (low + high) // 2
        count = await prompt_tokens(kept_messages(messages, middle))
        if count is not None and count <= budget:
            high = middle
        else:
            low = middle + 1
    return kept_messages(messages, low)


def keep_head_and_tail(token_ids: Sequence[int], budget: int, keep_tokens: int) -> list[int]:
    """``token_ids`` cut to ``budget``: the first ``keep_tokens`` and the rest from the end."""
    if len(token_ids) <= budget:
        return list(token_ids)
    keep = max(0, min(keep_tokens, budget - 1))
    tail = budget - keep
    return list(token_ids[:keep]) + list(token_ids[len(token_ids) - tail :])


def fitted_max_tokens(max_tokens: int | None, prompt_tokens: int, limit: int) -> int:
    """The output budget left by a prompt: ``max_tokens`` capped where the context is full."""
    room = max(limit - prompt_tokens, 1)
    return room if max_tokens is None else min(max_tokens, room)
