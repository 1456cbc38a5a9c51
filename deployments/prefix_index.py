"""Prefix affinity and load, scored together: the pure part of the cache-aware router.

Nothing here imports Ray, so every rule can be tested on its own (``tests/unit``).

- :func:`prompt_key_text` writes a generation request the way the engine will see it, in
  order: the adapter/model id, the tools (a chat template lists them first), then every message
  with its role. Two requests share a key prefix exactly when their rendered prompts share one.
- :func:`block_hashes` cuts that text into fixed character blocks (a stable approximation of
  the engine's KV blocks: 64 characters are about 16 tokens, vLLM's block) and chains their
  hashes, so block ``i``'s hash names the whole prefix up to it, as vLLM's block hashes do.
- :class:`ReplicaIndex` is one replica's learned cache: block hashes in LRU order, bounded to
  that replica's KV capacity.
- :func:`rank_replicas` scores every replica: uncached prompt tokens plus in-flight requests
  times a weight, among the replicas whose load stays within ``max_load_ratio`` of the average.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from serve_app.core.internal_types import GenerationRequest


def prompt_key_text(request: GenerationRequest) -> str:
    """The request's prompt as the engine will render it (roles, tools, adapter id kept)."""
    parts = [f"<model:{request.model}>"]
    if request.kind == "completion":
        prompt = request.prompt
        parts.append(" ".join(map(str, prompt)) if isinstance(prompt, list) else (prompt or ""))
        return "".join(parts)
    if request.tools:
        parts.append(json.dumps([t.model_dump(exclude_none=True) for t in request.tools], sort_keys=True))
    for message in request.messages:
        parts.append(f"<|{message.role}|>")
        parts.append(message.text())
        if message.tool_calls:
            parts.append(json.dumps([c.model_dump() for c in message.tool_calls], sort_keys=True))
        if message.tool_call_id:
            parts.append(f"<id:{message.tool_call_id}>")
    return "".join(parts)


def block_hashes(text: str, block_chars: int) -> list[int]:
    """Chained hashes of the full ``block_chars`` blocks of ``text`` (a partial tail is not cached)."""
    hashes = []
    previous = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        previous = hash((previous, text[start : start + block_chars]))
        hashes.append(previous)
    return hashes


class ReplicaIndex:
    """The prefix blocks one replica is believed to hold, least recently used first."""

    def __init__(self, capacity_blocks: int) -> None:
        self.capacity_blocks = max(1, capacity_blocks)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched_blocks(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` this replica holds."""
        matched = 0
        for value in hashes:
            if value not in self._blocks:
                break
            matched += 1
        return matched

    def insert(self, hashes: Sequence[int]) -> None:
        """Record that the replica now holds ``hashes``, evicting the least recently used."""
        blocks = self._blocks
        # Last blocks first, so a prefix's first block is the most recent: like the engine, the
        # index then drops the tails of old prompts before their shared beginnings.
        for value in reversed(hashes):
            if value in blocks:
                blocks.move_to_end(value)
            else:
                blocks[value] = None
        while len(blocks) > self.capacity_blocks:
            blocks.popitem(last=False)

    def resize(self, capacity_blocks: int) -> None:
        """Bound the index to a new capacity (the replica reported its KV cache size)."""
        self.capacity_blocks = max(1, capacity_blocks)
        while len(self._blocks) > self.capacity_blocks:
            self._blocks.popitem(last=False)


@dataclass(slots=True)
class ReplicaLoad:
    """What the router knows of one replica when it picks: index and in-flight work."""

    replica: str
    index: ReplicaIndex
    in_flight: int = 0
    routed: int = 0


@dataclass(frozen=True, slots=True)
class Weights:
    """The scorer's settings (``routing:`` of a model in config.yaml)."""

    block_chars: int = 64
    chars_per_token: float = 4.0
    load_weight_tokens: float = 128.0
    max_load_ratio: float = 1.5
    load_slack_requests: int = 2


@dataclass(slots=True)
class Choice:
    """The ranking of one request: best replica first, and what the best one is expected to hit."""

    ranked: list[ReplicaLoad] = field(default_factory=list)
    matched_blocks: int = 0
    total_blocks: int = 0


def rank_replicas(replicas: Iterable[ReplicaLoad], hashes: Sequence[int], weights: Weights) -> Choice:
    """Every replica, best first, for a request whose key blocks are ``hashes``.

    Eligible first: a replica whose in-flight count, with this request added, stays within
    ``max_load_ratio`` times the average, or within ``load_slack_requests`` of the least loaded
    (at light load a ratio alone would split every chat from its cache) - one hot prefix can
    then never pin all traffic to one replica. Among those, the lowest cost wins: uncached prompt tokens
    plus ``load_weight_tokens`` per request in flight. With nothing shared, every replica misses
    alike and this is shortest-queue. Ties go to the replica routed fewer requests, then by name,
    so the choice never depends on luck.
    """
    candidates = list(replicas)
    if not candidates:
        return Choice()
    total = sum(r.in_flight for r in candidates) + 1
    least = min(r.in_flight for r in candidates)
    bound = max(weights.max_load_ratio * total / len(candidates), least + max(weights.load_slack_requests, 1))
    tokens_per_block = weights.block_chars / weights.chars_per_token
    scored = []
    for replica in candidates:
        matched = replica.index.matched_blocks(hashes) if hashes else 0
        uncached_tokens = (len(hashes) - matched) * tokens_per_block
        eligible = replica.in_flight + 1 <= bound
        cost = uncached_tokens + weights.load_weight_tokens * replica.in_flight
        scored.append(((not eligible, cost, replica.in_flight, replica.routed, replica.replica), replica, matched))
    scored.sort(key=lambda item: item[0])
    return Choice(ranked=[item[1] for item in scored], matched_blocks=scored[0][2], total_blocks=len(hashes))


def capacity_blocks(kv_capacity_tokens: int, weights: Weights) -> int:
    """Index blocks that stand for ``kv_capacity_tokens`` of a replica's KV cache."""
    return max(1, math.floor(kv_capacity_tokens * weights.chars_per_token / weights.block_chars))
