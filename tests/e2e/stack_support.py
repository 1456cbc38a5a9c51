"""What the end-to-end modules share: config.yaml's application and facts about its chat model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHAT = "smollm2:135m"
EMBED = "all-minilm:l6-v2"


def app_config() -> dict[str, Any]:
    """config.yaml's one application (runtime_env and args), as ``serve run`` reads it."""
    return yaml.safe_load((REPO / "config.yaml").read_text())["applications"][0]


def chat_model_folder() -> Path:
    """The Hugging Face folder vLLM serves the chat model from (imported by `make models`)."""
    from deployments.model_sources import resolve_model_source

    source = next(m for m in app_config()["args"]["models"] if m["name"] == CHAT)["engine_args"]["source"]
    return Path(resolve_model_source(source, convert=False))


def trained_context_length() -> int:
    """What the chat model's own config.json says it was trained for."""
    return json.loads((chat_model_folder() / "config.json").read_text())["max_position_embeddings"]


def prompt_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of ``messages`` under the model's own chat template (with the generation prompt)."""
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(templated, add_special_tokens=False)["input_ids"])
