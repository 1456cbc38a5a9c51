"""One resolver for model names, shared by both APIs.

Ollama's rules: a name without a tag means ``name:latest``; names compare case-insensitively.
Configured aliases (``gpt-4o-mini -> smollm2:135m``) resolve to the canonical name.
"""

from __future__ import annotations

from collections.abc import Iterable

from serve_app.core.errors import ModelNotFound
from serve_app.core.internal_types import ModelCard


def normalize_model_name(name: str) -> str:
    """Ollama's canonical form: lower case, ``:latest`` when no tag is given.

    A registry-style prefix such as ``registry.ollama.ai/library/`` is dropped, as Ollama does.
    """
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    last_segment = name.rsplit("/", 1)[-1]
    if ":" not in last_segment:
        name = f"{name}:latest"
    return name


class ModelResolver:
    """Maps any accepted spelling of a model to its canonical name."""

    def __init__(self, cards: Iterable[ModelCard]) -> None:
        self._by_key: dict[str, str] = {}
        for card in cards:
            for spelling in (card.name, *card.aliases):
                key = normalize_model_name(spelling)
                existing = self._by_key.get(key)
                if existing is not None and existing != card.name:
                    raise ValueError(
                        f"model name {spelling!r} is claimed by both {existing!r} and {card.name!r}"
                    )
                self._by_key[key] = card.name

    def resolve(self, name: str | None) -> str:
        """The canonical name for ``name``; :class:`ModelNotFound` if none matches."""
        if not name:
            raise ModelNotFound(name or "")
        canonical = self._by_key.get(normalize_model_name(name))
        if canonical is None:
            raise ModelNotFound(name)
        return canonical
