"""The cache-aware router's rules, without Ray: prefix keys, the LRU index, the ranking."""

from __future__ import annotations

import pytest

from deployments.config import ConfigError, parse_app_config
from deployments.prefix_index import (
    ReplicaIndex,
    ReplicaLoad,
    Weights,
    block_hashes,
    capacity_blocks,
    prompt_key_text,
    rank_replicas,
)
from serve_app.core.internal_types import ChatMessage, GenerationRequest, ToolSpec

W = Weights()
SYSTEM = "You answer questions about the manual. " * 40


def _request(*messages: tuple[str, str], tools: list[ToolSpec] | None = None, model: str = "m") -> GenerationRequest:
    return GenerationRequest(
        model=model, messages=[ChatMessage(role=r, content=c) for r, c in messages], tools=tools
    )


def _hashes(request: GenerationRequest) -> list[int]:
    return block_hashes(prompt_key_text(request), W.block_chars)


def test_the_key_is_the_prompt_as_rendered_roles_tools_and_model_included() -> None:
    base = _hashes(_request(("system", SYSTEM), ("user", "hi")))
    assert _hashes(_request(("system", SYSTEM), ("user", "hello")))[: len(base) - 1] == base[:-1]
    # The same words under another role, with tools, or for another model (adapter) share nothing.
    assert _hashes(_request(("user", SYSTEM), ("user", "hi")))[0] != base[0]
    assert _hashes(_request(("system", SYSTEM), ("user", "hi"), tools=[ToolSpec(name="f")]))[0] != base[0]
    assert _hashes(_request(("system", SYSTEM), ("user", "hi"), model="m:adapter"))[0] != base[0]


def test_a_later_turn_extends_the_earlier_turns_blocks() -> None:
    first = _hashes(_request(("system", SYSTEM), ("user", "q1")))
    second = _hashes(_request(("system", SYSTEM), ("user", "q1"), ("assistant", "a1"), ("user", "q2")))
    assert second[: len(first)] == first


def test_the_index_is_lru_bounded_and_drops_old_tails_before_shared_heads() -> None:
    index = ReplicaIndex(capacity_blocks=10)
    shared = block_hashes("S" * 64 * 4, 64)  # 4 blocks
    a = block_hashes("S" * 64 * 4 + "A" * 64 * 4, 64)
    b = block_hashes("S" * 64 * 4 + "B" * 64 * 4, 64)
    index.insert(a)
    index.insert(b)  # 8 + 4 new > 10: a's last blocks go first
    assert len(index) == 10
    assert index.matched_blocks(shared) == 4
    assert index.matched_blocks(b) == 8
    assert index.matched_blocks(a) == 6
    index.resize(4)
    assert index.matched_blocks(b) == 4 and len(index) == 4


def test_capacity_in_blocks_follows_the_reported_kv_tokens() -> None:
    assert capacity_blocks(16384, W) == 16384 * 4 // 64


def _loads(*in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(f"r{i}", ReplicaIndex(1000), in_flight=n) for i, n in enumerate(in_flight)]


def test_affinity_wins_when_load_is_close() -> None:
    loads = _loads(1, 0, 0)
    hashes = _hashes(_request(("system", SYSTEM), ("user", "q")))
    loads[0].index.insert(hashes)
    choice = rank_replicas(loads, hashes, W)
    assert choice.ranked[0].replica == "r0"
    assert choice.matched_blocks == len(hashes)


def test_nothing_shared_is_least_loaded_then_least_routed() -> None:
    loads = _loads(2, 1, 1)
    loads[1].routed = 5
    hashes = _hashes(_request(("user", "unique question")))
    assert [r.replica for r in rank_replicas(loads, hashes, W).ranked] == ["r2", "r1", "r0"]


def test_a_hot_prefix_spills_over_once_its_replica_is_over_the_bound() -> None:
    hashes = _hashes(_request(("system", SYSTEM), ("user", "q")))
    loads = _loads(6, 3, 3)
    loads[0].index.insert(hashes)
    # 6 + 1 > max(1.5 * 13 / 3, 3 + 2): the holder is not eligible now.
    assert rank_replicas(loads, hashes, W).ranked[0].replica != "r0"
    # Streams routed one by one never leave the busiest above 1.5x the average.
    loads = _loads(0, 0, 0)
    loads[0].index.insert(hashes)
    for _ in range(12):
        rank_replicas(loads, hashes, W).ranked[0].in_flight += 1
    counts = [r.in_flight for r in loads]
    assert max(counts) / (sum(counts) / 3) <= 1.5, counts


def _config(routing: object, replicas: int = 2) -> dict[str, object]:
    return {"models": [{"name": "m", "engine": "fake", "deployment": {"num_replicas": replicas}, "routing": routing}]}


def test_routing_config_picks_serves_router_class_and_refuses_foreign_settings() -> None:
    model = parse_app_config(_config("cache_aware")).models[0]
    router = model.serve_options(1.0)["request_router_config"]
    assert router["request_router_class"] == "deployments.request_routers.CacheAwareRouter"
    ray_model = parse_app_config(_config({"policy": "ray_prefix_affinity", "imbalanced_threshold": 4})).models[0]
    ray_router = ray_model.serve_options(1.0)["request_router_config"]
    assert ray_router["request_router_kwargs"] == {"imbalanced_threshold": 4.0}
    default = parse_app_config(_config("serve_default")).models[0].serve_options(1.0)["request_router_config"]
    assert default["request_router_class"] == "deployments.request_routers.CountingPowerOfTwoRouter"
    assert "request_router_config" not in parse_app_config(_config("cache_aware", 1)).models[0].serve_options(1.0)
    with pytest.raises(ConfigError, match="imbalanced_threshold do not apply"):
        parse_app_config(_config({"policy": "cache_aware", "imbalanced_threshold": 4}))
    with pytest.raises(ConfigError, match="routing"):
        parse_app_config(_config("round_robin"))
