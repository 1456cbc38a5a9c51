"""What a model's own files say about it: trained context length, size on disk, a content digest.

Read at build time from the model's source, so that the context length vLLM serves, the one
``/api/show`` reports and the one the README states are the same number, and ``/api/tags`` and
``/api/ps`` show a real size and one digest. Nothing here loads weights or imports torch:

- a Hugging Face folder: ``config.json`` (``max_position_embeddings`` and its aliases) and the
  sizes of its files;
- a ``.gguf`` file: the imported folder when the import has been done, else the file's own
  metadata (``<arch>.context_length``, read with the ``gguf`` package) and its size;
- a hub id: nothing is known before vLLM downloads it (the config then names the context).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from deployments.model_sources import (
    ModelSource,
    ModelSourceError,
    converted_dir,
    is_imported,
    source_path,
)

# Config keys that carry the trained context length, in the order transformers models use them.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# Files up to this size feed their bytes into the digest; larger ones (weights) their size only.
_DIGEST_CONTENT_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """Facts read from a model's files (``None`` where the files do not say)."""

    context_length: int | None
    size_bytes: int
    digest: str | None


def _config_context(config: dict[str, object]) -> int | None:
    for container in (config, config.get("text_config")):
        if not isinstance(container, dict):
            continue
        for key in CONTEXT_KEYS:
            value = container.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None


def folder_digest(folder: Path) -> str:
    """sha256 over a folder's file names and sizes, and the bytes of its small files.

    Stable for the same files on any machine, cheap for large weights (their size stands in).
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        if size <= _DIGEST_CONTENT_LIMIT:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def folder_facts(folder: Path) -> ModelFacts:
    """Facts of a Hugging Face model folder."""
    config_path = folder / "config.json"
    context = None
    if config_path.is_file():
        context = _config_context(json.loads(config_path.read_text()))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return ModelFacts(context_length=context, size_bytes=size, digest=folder_digest(folder))


def gguf_facts(path: Path) -> ModelFacts:
    """Facts of a ``.gguf`` file from its metadata header."""
    from gguf import GGUFReader  # installed with the cpu/gpu extras; only needed here

    reader = GGUFReader(str(path))

    def field(name: str) -> object | None:
        entry = reader.fields.get(name)
        if entry is None or not entry.data:
            return None
        part = entry.parts[entry.data[0]]
        return bytes(part).decode() if entry.types and entry.types[0].name == "STRING" else part[0]

    arch = field("general.architecture")
    context = field(f"{arch}.context_length") if arch else None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return ModelFacts(
        context_length=int(context) if context is not None else None,
        size_bytes=path.stat().st_size,
        digest=digest.hexdigest(),
    )


def describe_source(source: ModelSource, cache_dir: str | os.PathLike[str] | None = None) -> ModelFacts:
    """What the files of ``source`` say, without importing or downloading anything."""
    if source.kind == "hub":
        return ModelFacts(context_length=None, size_bytes=0, digest=None)
    try:
        path = source_path(source)
    except ModelSourceError:
        # The replica will report the missing files; the card keeps what the config says.
        return ModelFacts(context_length=None, size_bytes=0, digest=None)
    if path.is_dir():
        return folder_facts(path)
    if source.is_gguf:
        target = converted_dir(source, cache_dir)
        if is_imported(target):
            return folder_facts(target)
        return gguf_facts(path)
    return ModelFacts(context_length=None, size_bytes=path.stat().st_size, digest=None)
