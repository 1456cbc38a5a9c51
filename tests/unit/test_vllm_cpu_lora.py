"""vLLM's PyTorch LoRA ops (the CPU platform's) after our plugin: a token without an adapter
(index -1) keeps its row, a token with one gets exactly its own adapter's delta; and vLLM finds
the plugin through its entry point. The end-to-end proof (a mixed batch on real vLLM) is
``tests/e2e/test_adapters_vllm.py``'s."""

from __future__ import annotations

import importlib.util
from importlib.metadata import entry_points

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")


@pytest.fixture(scope="module")
def ops():  # noqa: ANN201 - vLLM's module
    from deployments.engines.vllm_cpu_lora import register

    register()
    register()  # idempotent: the ops are wrapped once
    return importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")


def test_the_plugin_is_vllms_general_plugin() -> None:
    found = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert found.get("cpu_lora_no_adapter_rows") == "deployments.engines.vllm_cpu_lora:register"


def test_every_holder_of_the_ops_gets_the_wrapped_ones(ops) -> None:  # noqa: ANN001
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
    package = importlib.import_module("vllm.lora.ops.torch_ops")
    for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"):
        op = getattr(ops, name)
        assert getattr(op, "_keeps_no_adapter_rows", False), name
        assert getattr(punica_cpu, name) is op and getattr(package, name) is op
        assert not getattr(op.__wrapped__, "_keeps_no_adapter_rows", False)  # wrapped once


def test_tokens_without_an_adapter_keep_their_rows_in_shrink_and_expand(ops) -> None:  # noqa: ANN001
    import torch

    torch.manual_seed(0)
    tokens, hidden, rank, slots = 5, 12, 4, 3
    a = torch.randn(slots, 1, rank, hidden)  # shrink weights: hidden -> rank
    b = torch.randn(slots, 1, hidden, rank)  # expand weights: rank -> hidden
    x = torch.randn(tokens, hidden)
    indices = torch.tensor([0, -1, 2, -1, 1])

    # Shrink into a zeroed buffer (how vLLM calls it), then expand added onto the base output.
    buffer = torch.zeros(tokens, rank)
    ops.bgmv_shrink(x, a, buffer, indices, 0.5)
    base_out = torch.randn(tokens, hidden)
    out = base_out.clone()
    ops.bgmv_expand(buffer, b, out, indices, add_inputs=True)
    sliced = base_out.clone()
    ops.bgmv_expand_slice(buffer, b[:, :, :6, :], sliced, indices, 3, 6, add_inputs=True)

    for row, slot in enumerate(indices.tolist()):
        if slot < 0:
            assert torch.equal(buffer[row], torch.zeros(rank))
            assert torch.equal(out[row], base_out[row])
            assert torch.equal(sliced[row], base_out[row])
            continue
        delta = 0.5 * (x[row] @ a[slot, 0].T)
        assert torch.allclose(buffer[row], delta, atol=1e-5)
        assert torch.allclose(out[row], base_out[row] + delta @ b[slot, 0].T, atol=1e-4)
        assert torch.allclose(sliced[row, 3:9], base_out[row, 3:9] + delta @ b[slot, 0, :6].T, atol=1e-4)
        assert torch.equal(sliced[row, :3], base_out[row, :3])


def test_the_prefill_ops_that_call_them_are_fixed_too(ops) -> None:  # noqa: ANN001
    import torch

    torch.manual_seed(1)
    hidden, rank = 8, 2
    a = torch.randn(2, 1, rank, hidden)
    x = torch.randn(5, hidden)
    buffer = torch.full((5, rank), 7.0)
    # Two sequences, one of 3 tokens without an adapter, then one of 2 with slot 1.
    ops.sgmv_shrink(x, a, buffer, torch.tensor([0, 3]), torch.tensor([3, 2]), torch.tensor([-1, 1]), 2, 3, 5, 1.0)
    assert torch.equal(buffer[:3], torch.full((3, rank), 7.0))
    assert torch.allclose(buffer[3:], x[3:] @ a[1, 0].T, atol=1e-5)
