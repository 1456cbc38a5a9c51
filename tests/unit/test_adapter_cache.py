"""The adapter cache a replica keeps: one load per adapter however many ask, failures not kept,
least recently used evicted first; and the names an adapter folder may be asked for."""

from __future__ import annotations

import asyncio

import pytest

from deployments.engines.adapters import AdapterCache, AdapterLoadFailed
from serve_app.core.internal_types import ModelCard
from serve_app.core.model_names import ModelResolver, is_adapter_folder_name


def test_concurrent_first_uses_share_one_load_and_a_failure_is_retried() -> None:
    loads: list[str] = []
    unloads: list[str] = []
    fail = {"bad"}

    async def load(name: str) -> str:
        loads.append(name)
        await asyncio.sleep(0.01)
        if name in fail:
            raise AdapterLoadFailed(f"adapter '{name}' cannot load")
        return f"loaded {name}"

    async def unload(name: str) -> None:
        unloads.append(name)

    async def main() -> None:
        cache = AdapterCache(2, load, unload)
        assert await asyncio.gather(*(cache.get("a") for _ in range(20))) == ["loaded a"] * 20
        assert loads == ["a"]
        outcomes = await asyncio.gather(*(cache.get("bad") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(o, AdapterLoadFailed) for o in outcomes) and loads.count("bad") == 1
        fail.clear()
        assert await cache.get("bad") == "loaded bad"  # not remembered as failed: tried again
        await cache.get("a")
        await cache.get("c")  # over capacity 2: "bad" is the least recently used
        assert cache.held() == ["a", "c"] and unloads == ["bad"] and cache.evictions == 1
        await cache.evict("nothing")
        assert unloads == ["bad"]

    asyncio.run(main())


def test_an_unlisted_adapter_is_named_base_colon_folder_of_a_base_with_a_folder() -> None:
    resolver = ModelResolver([
        ModelCard(name="smollm2:135m", aliases=["smollm2"], loads_unlisted_adapters=True),
        ModelCard(name="qwen:1"),
    ])
    assert resolver.resolve("smollm2:135m:pirate") == "smollm2:135m:pirate"
    assert resolver.unlisted_adapter_base("smollm2:135m:pirate") == "smollm2:135m"
    # An alias of the base takes its tag (``smollm2`` is ``smollm2:latest``): not the base's name.
    assert resolver.unlisted_adapter_base("qwen:1:pirate") is None
    for name in ("smollm2:135m:", "smollm2:135m:../x", "smollm2:135m:a/b", "qwen:1:x"):
        with pytest.raises(Exception, match="not found|does not exist"):
            resolver.resolve(name)
    assert [is_adapter_folder_name(n) for n in ("a-1.b_c", "..", ".", "", "a/b", "é")] == [True, False, False, False, False, False]
