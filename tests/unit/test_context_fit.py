"""The context-fitting rules (Ollama's), as pure functions over a token counter."""

from __future__ import annotations

import asyncio
import random

import pytest

from deployments.engines.context_fit import (
    fit_messages,
    fitted_max_tokens,
    keep_head_and_tail,
    kept_messages,
    output_reserve,
)
from serve_app.core.internal_types import ChatMessage, ContextFit


def msg(role: str, tokens: int, tag: str = "") -> ChatMessage:
    return ChatMessage(role=role, content=" ".join([tag or role] * tokens))  # type: ignore[arg-type]


def count(messages: list[ChatMessage]) -> int:
    return sum(len(m.text().split()) for m in messages)


async def counted(messages: list[ChatMessage]) -> int:
    return count(messages)


def ollama_linear_scan(messages: list[ChatMessage], budget: int) -> list[ChatMessage]:
    """Ollama 0.12's chatPrompt loop, transcribed: walk back while the suffix still fits."""
    n = len(messages) - 1
    for i in range(n - 1, -1, -1):
        if count(kept_messages(messages, i)) > budget:
            break
        n = i
    return kept_messages(messages, n)


def test_keeps_system_messages_and_the_newest_that_fit() -> None:
    messages = [msg("system", 2, "s0"), msg("user", 5, "u1"), msg("assistant", 5, "a2"), msg("user", 3, "u3")]
    kept = asyncio.run(fit_messages(messages, counted, budget=10))
    assert [m.text().split()[0] for m in kept] == ["s0", "a2", "u3"]


def test_system_messages_from_the_dropped_part_move_to_the_front_in_order() -> None:
    messages = [msg("user", 9, "u0"), msg("system", 1, "s1"), msg("user", 9, "u2"), msg("system", 1, "s3"),
                msg("assistant", 4, "a4"), msg("user", 2, "u5")]
    kept = asyncio.run(fit_messages(messages, counted, budget=9))
    assert [m.text().split()[0] for m in kept] == ["s1", "s3", "a4", "u5"]


def test_the_last_message_is_kept_even_when_nothing_fits() -> None:
    messages = [msg("system", 3, "s"), msg("user", 4, "u"), msg("user", 50, "last")]
    kept = asyncio.run(fit_messages(messages, counted, budget=10))
    assert [m.text().split()[0] for m in kept] == ["s", "last"]


def test_an_uncountable_candidate_counts_as_too_long() -> None:
    async def refuses_long(messages: list[ChatMessage]) -> int | None:
        total = count(messages)
        return None if total > 20 else total

    messages = [msg("user", 30, "old"), msg("user", 5, "mid"), msg("user", 5, "new")]
    kept = asyncio.run(fit_messages(messages, refuses_long, budget=12))
    assert [m.text().split()[0] for m in kept] == ["mid", "new"]


@pytest.mark.parametrize("seed", range(40))
def test_bisection_keeps_what_ollamas_linear_scan_keeps(seed: int) -> None:
    rng = random.Random(seed)
    roles = ["system", "user", "assistant", "tool"]
    messages = [msg(rng.choice(roles), rng.randint(1, 12), f"m{i}") for i in range(rng.randint(1, 25))]
    budget = rng.randint(1, 80)
    renders = 0

    async def counting(candidate: list[ChatMessage]) -> int:
        nonlocal renders
        renders += 1
        return count(candidate)

    assert asyncio.run(fit_messages(messages, counting, budget)) == ollama_linear_scan(messages, budget)
    assert renders <= max(1, len(messages)).bit_length() + 1  # a few renders, not one per message


def test_keep_head_and_tail() -> None:
    ids = list(range(20))
    assert keep_head_and_tail(ids, 8, 3) == [0, 1, 2, 15, 16, 17, 18, 19]
    assert keep_head_and_tail(ids, 25, 3) == ids  # fits: untouched
    assert keep_head_and_tail(ids, 5, 0) == [15, 16, 17, 18, 19]
    assert keep_head_and_tail(ids, 5, 10**9) == [0, 1, 2, 3, 19]  # num_keep -1: the start, one token of the end


def test_output_reserve_and_fitted_max_tokens() -> None:
    assert output_reserve(ContextFit(), None, 8192) == 2048  # a quarter without num_predict
    assert output_reserve(ContextFit(), 100, 8192) == 100
    assert output_reserve(ContextFit(), 10_000, 8192) == 4096  # at most half
    assert output_reserve(ContextFit(shift=False), 100, 8192) == 1  # no shift: what is left
    assert fitted_max_tokens(None, 8000, 8192) == 192
    assert fitted_max_tokens(50, 8000, 8192) == 50
    assert fitted_max_tokens(500, 8000, 8192) == 192
