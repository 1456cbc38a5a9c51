"""LoRA adapters of the offline chat model, made by the tests themselves (no downloads).

``make_adapter`` builds a PEFT LoRA of SmolLM2 with random weights (``init_lora_weights=False``,
FACTS.md): a few MB whose greedy answers differ from the base's. ``python -m
tests.e2e.lora_support BASE_FOLDER PROMPT ADAPTER...`` prints vLLM's own offline greedy answers
(``vllm.LLM`` with a ``LoRARequest`` per adapter) as JSON, in a process of its own so its engine
is gone before the served one starts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RANK = 8
MAX_TOKENS = 12


def make_adapter(base_folder: Path, target: Path, seed: int) -> Path:
    """A rank-8 LoRA on ``q_proj``/``v_proj`` of the model in ``base_folder``, saved in ``target``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_folder, torch_dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(target)
    return target


def offline_answers(base_folder: str, prompt: str, adapters: list[str]) -> dict[str, str]:
    """vLLM's greedy completions of ``prompt``: the base's (key ``""``) and each adapter's."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    llm = LLM(model=base_folder, dtype="float32", enforce_eager=True, enable_lora=True, max_lora_rank=RANK,
              max_loras=2, max_model_len=2048, seed=0)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    answers = {"": llm.generate([prompt], params)[0].outputs[0].text}
    for i, path in enumerate(adapters, start=1):
        lora = LoRARequest(Path(path).name, i, path)
        answers[path] = llm.generate([prompt], params, lora_request=lora)[0].outputs[0].text
    return answers


if __name__ == "__main__":
    base, prompt, *paths = sys.argv[1:]
    print("ANSWERS " + json.dumps(offline_answers(base, prompt, paths)))
