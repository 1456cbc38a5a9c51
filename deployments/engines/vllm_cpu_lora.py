"""A vLLM general plugin: base-model rows stay untouched in vLLM's PyTorch LoRA ops (CPU).

vLLM marks a token that uses no adapter with the lora index ``-1``. Its Triton kernels skip such
tokens, but the PyTorch ops the CPU platform uses (``vllm.lora.ops.torch_ops``, vLLM 0.32) index
the stacked adapter weights with it, and ``weights[-1]`` is the *last* adapter slot. So in a batch
that mixes base-model and adapter requests, the base requests silently get an adapter's delta
(measured here: the base's greedy answer became the second adapter's; upstream PR
vllm-project/vllm#48421, open). This module wraps the three ``bgmv_*`` ops, which the ``sgmv_*``
ones call, so the rows of ``-1`` tokens keep the values they had before the op: what the Triton
kernels do. Rows of real adapters are computed by vLLM's own op, unchanged.

vLLM loads the ``vllm.general_plugins`` entry point (``pyproject.toml``) in every process it
starts, the engine core and its workers included, which is where these ops run; the import of
vLLM is lazy, inside :func:`register`, as in the engine module.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# The ops, and the modules that hold a reference to them (``punica_cpu`` imports them by name).
_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
_HOLDERS = ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.ops.torch_ops", "vllm.lora.punica_wrapper.punica_cpu")
_MARK = "_keeps_no_adapter_rows"


def keep_no_adapter_rows(op: Callable[..., None]) -> Callable[..., None]:
    """``op(inputs, weights, output, lora_indices, ...)`` with the output rows of tokens whose
    index is ``-1`` left as they were, and those tokens gathering slot 0 instead of the last one."""

    @functools.wraps(op)
    def wrapped(inputs: Any, weights: Any, output: Any, lora_indices: Any, *args: Any, **kwargs: Any) -> None:
        no_adapter = lora_indices < 0
        if not bool(no_adapter.any()):
            return op(inputs, weights, output, lora_indices, *args, **kwargs)
        # The op writes output[:limit] from lora_indices[:limit]; keep the "-1" rows of that span.
        rows = min(output.shape[0], lora_indices.shape[0])
        keep = no_adapter[:rows].nonzero().squeeze(-1)
        kept = output[keep].clone()
        op(inputs, weights, output, lora_indices.clamp(min=0), *args, **kwargs)
        output[keep] = kept

    setattr(wrapped, _MARK, True)
    return wrapped


def register() -> None:
    """Patch vLLM's PyTorch LoRA ops in this process (idempotent; nothing if vLLM lacks them)."""
    try:
        ops = importlib.import_module(_HOLDERS[0])
    except ImportError:  # a vLLM without the PyTorch LoRA ops: nothing to fix
        return
    for name in _OPS:
        original = getattr(ops, name, None)
        if original is None or getattr(original, _MARK, False):
            continue
        patched = keep_no_adapter_rows(original)
        for holder in _HOLDERS:
            try:
                module = importlib.import_module(holder)
            except ImportError:
                continue
            if getattr(module, name, None) is original:
                setattr(module, name, patched)
    logger.debug("vLLM's PyTorch LoRA ops keep the rows of tokens without an adapter")
