"""The pure limit book (token buckets, leases) and the keys-file parser, on a fake clock."""

from __future__ import annotations

import pytest

from serve_app.core.internal_types import GenerationChunk
from serve_app.edge.keys import KeyLimits, KeysFileError, build_keyring, parse_keys_text
from serve_app.edge.limits import LimitBook, TokenBucket, retry_after_headers
from serve_app.edge.request_context import RequestContext


def test_bucket_refills_at_rate_up_to_capacity() -> None:
    bucket = TokenBucket.full(capacity=2, rate=1.0, now=0.0)
    bucket.take(2, now=0.0)
    assert bucket.wait_for(1, now=0.0) == pytest.approx(1.0)
    assert bucket.wait_for(1, now=0.25) == pytest.approx(0.75)
    assert bucket.wait_for(1, now=100.0) == 0.0
    assert bucket.level == 2  # capped


def test_requests_per_minute_with_burst() -> None:
    book = LimitBook()
    limits = KeyLimits("a", requests_per_minute=60, burst=2)
    assert book.admit(limits, 0.0).admitted
    assert book.admit(limits, 0.0).admitted
    refused = book.admit(limits, 0.0)
    assert (refused.admitted, refused.limit) == (False, "requests_per_minute")
    assert refused.retry_after_s == pytest.approx(1.0)
    assert not book.admit(limits, 0.5).admitted
    assert book.admit(limits, 1.0).admitted


def test_tokens_are_charged_after_and_may_go_negative() -> None:
    book = LimitBook()
    limits = KeyLimits("a", tokens_per_minute=600)  # 10 tokens per second
    first = book.admit(limits, 0.0)
    assert first.admitted
    book.settle(limits, first.lease, tokens=1000, now=1.0)  # 400 below zero
    refused = book.admit(limits, 1.0)
    assert (refused.admitted, refused.limit) == (False, "tokens_per_minute")
    assert refused.retry_after_s == pytest.approx(40.1)
    assert book.admit(limits, 41.2).admitted


def test_concurrency_leases_and_expiry() -> None:
    book = LimitBook(lease_ttl_s=10)
    limits = KeyLimits("a", max_concurrent=1)
    held = book.admit(limits, 0.0)
    assert held.admitted and held.lease
    refused = book.admit(limits, 1.0)
    assert (refused.admitted, refused.limit) == (False, "max_concurrent")
    book.settle(limits, held.lease, tokens=0, now=2.0)
    again = book.admit(limits, 2.0)
    assert again.admitted
    # Never settled (its replica died): reclaimed once the lease expires.
    assert not book.admit(limits, 11.0).admitted
    assert book.admit(limits, 12.5).admitted


def test_refusal_takes_nothing_and_keys_are_independent() -> None:
    book = LimitBook()
    a, b = KeyLimits("a", requests_per_minute=60, burst=1), KeyLimits("b", requests_per_minute=60, burst=1)
    assert book.admit(a, 0.0).admitted
    for _ in range(5):
        assert not book.admit(a, 0.0).admitted
    assert book.admit(b, 0.0).admitted
    assert book.admit(a, 1.0).admitted  # refusals did not dig the bucket deeper


def test_retry_after_headers() -> None:
    assert retry_after_headers(0.25) == {"retry-after": "1", "retry-after-ms": "250"}
    assert retry_after_headers(40.01) == {"retry-after": "41", "retry-after-ms": "40010"}


def test_keys_text_formats() -> None:
    assert parse_keys_text("k1\n# c\nk2 # c\n") == (["k1", "k2"], [])
    assert parse_keys_text("weird:key\n") == (["weird:key"], [])
    plain, structured = parse_keys_text('{"keys": [{"name": "n", "key": "k", "max_concurrent": 2}]}')
    assert plain == [] and structured[0].max_concurrent == 2
    with pytest.raises(KeysFileError, match="only 'keys'"):
        parse_keys_text("keys: []\nextra: 1\n")


def test_keyring_names_and_secrets_unique() -> None:
    plain, structured = parse_keys_text("keys:\n  - {name: a, key: same}\n")
    with pytest.raises(KeysFileError, match="more than once") as raised:
        build_keyring(["same"], structured)
    assert "same" not in str(raised.value).replace("the same key", "")
    assert [k.name for k in build_keyring(["x", "y"], structured)] == ["key-1", "key-2", "a"]


def test_batch_gaps_spread_over_the_tokens_of_a_batch() -> None:
    ctx = RequestContext("r", "openai", "POST", "/v1/chat/completions", started=0.0)
    ctx.observe_batch([GenerationChunk(text="a", queued_s=0.2)], now=1.0)
    ctx.observe_batch([GenerationChunk(text="b"), GenerationChunk(text="c")], now=1.5)
    ctx.observe_batch([GenerationChunk(finish_reason="stop")], now=1.6)
    assert (ctx.ttft_s, ctx.queued_s, ctx.token_gaps, ctx.token_chunks) == (1.0, 0.2, [0.25, 0.25], 3)
