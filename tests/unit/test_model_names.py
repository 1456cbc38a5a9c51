"""Golden tests of model-name resolution (Ollama's rules plus configured aliases)."""

from __future__ import annotations

import pytest

from serve_app.core.errors import ModelNotFound
from serve_app.core.internal_types import ModelCard
from serve_app.core.model_names import ModelResolver, normalize_model_name


@pytest.mark.parametrize(
    ("name", "normal"),
    [
        ("smollm2", "smollm2:latest"),
        ("smollm2:135m", "smollm2:135m"),
        ("SmolLM2:135M", "smollm2:135m"),
        ("  smollm2  ", "smollm2:latest"),
        ("registry.ollama.ai/library/smollm2:135m", "smollm2:135m"),
        ("library/llava", "llava:latest"),
        ("hf.co/org/model", "hf.co/org/model:latest"),
        ("host:5000/ns/model", "host:5000/ns/model:latest"),
        ("host:5000/ns/model:q4", "host:5000/ns/model:q4"),
        ("gpt-4o-mini", "gpt-4o-mini:latest"),
    ],
)
def test_normalize(name: str, normal: str) -> None:
    assert normalize_model_name(name) == normal


CARDS = [
    ModelCard(name="smollm2:135m", aliases=["gpt-4o-mini", "smollm2"]),
    ModelCard(name="llava:7b"),
    ModelCard(name="all-minilm:l6-v2", aliases=["text-embedding-3-small"], kind="embed"),
    ModelCard(name="qwen:latest"),
]


@pytest.mark.parametrize(
    ("asked", "canonical"),
    [
        ("smollm2:135m", "smollm2:135m"),
        ("smollm2", "smollm2:135m"),
        ("smollm2:latest", "smollm2:135m"),
        ("GPT-4o-mini", "smollm2:135m"),
        ("gpt-4o-mini:latest", "smollm2:135m"),
        ("llava:7b", "llava:7b"),
        ("registry.ollama.ai/library/llava:7b", "llava:7b"),
        ("text-embedding-3-small", "all-minilm:l6-v2"),
        ("qwen", "qwen:latest"),
    ],
)
def test_resolve(asked: str, canonical: str) -> None:
    assert ModelResolver(CARDS).resolve(asked) == canonical


@pytest.mark.parametrize("asked", ["llava", "llava:13b", "gpt-5", "", None, "smollm2:360m"])
def test_unknown(asked: str | None) -> None:
    with pytest.raises(ModelNotFound) as info:
        ModelResolver(CARDS).resolve(asked)
    assert info.value.status == 404 and info.value.code == "model_not_found" and info.value.param == "model"


def test_conflicting_aliases_are_a_config_error() -> None:
    with pytest.raises(ValueError, match="claimed by both"):
        ModelResolver([ModelCard(name="a:1", aliases=["x"]), ModelCard(name="b:1", aliases=["X:latest"])])
    # The same card naming itself twice is fine.
    assert ModelResolver([ModelCard(name="a:latest", aliases=["a"])]).resolve("A") == "a:latest"
