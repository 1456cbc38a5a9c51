"""One resolver for model names, shared by both APIs.

Ollama's rules: a name without a tag means ``name:latest``; names compare case-insensitively.
Configured aliases (``gpt-4o-mini -> smollm2:135m``) resolve to the canonical name.

LoRA adapters are models too: a listed adapter has its own card (and aliases). A base model
with an adapter folder also answers to ``<base>:<adapter>`` for any adapter in that folder
(Ray Serve LLM's ``base:adapter`` form); the base's replicas say whether it exists.
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
        self._adapter_folders: set[str] = set()
        for card in cards:
            if card.loads_unlisted_adapters:
                self._adapter_folders.add(card.name)
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
        key = normalize_model_name(name)
        canonical = self._by_key.get(key)
        if canonical is None:
            if self.unlisted_adapter_base(key) is not None:
                return key
            raise ModelNotFound(name)
        return canonical

    def unlisted_adapter_base(self, name: str) -> str | None:
        """The base model of ``name`` when it is ``<base>:<adapter>`` for a base with an
        adapter folder (``name`` canonical, as :meth:`resolve` returns it); else ``None``."""
        if not self._adapter_folders:
            return None
        base, sep, adapter = name.rpartition(":")
        if not sep or not is_adapter_folder_name(adapter):
            return None
        canonical = self._by_key.get(normalize_model_name(base))
        return canonical if canonical in self._adapter_folders else None


def is_adapter_folder_name(name: str) -> bool:
    """A name that may be looked up in an adapter folder: one path segment of letters, digits,
    ``.``, ``_`` and ``-`` (never ``..``), so a model name cannot reach outside the folder."""
    return bool(name) and name not in (".", "..") and all(c.isalnum() or c in "._-" for c in name) and name.isascii()
