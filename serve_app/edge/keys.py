"""API keys with names and per-key limits, from settings or a keys file.

Two keys-file formats are accepted:

* the old one: one bare key per line (``#`` starts a comment); keys are named ``key-N``;
* YAML or JSON: ``keys: [{name, key, requests_per_minute, tokens_per_minute, max_concurrent,
  burst, tokens_burst, models: [...]}]``; every field but ``key`` and ``name`` is optional.

Keys are :class:`~pydantic.SecretStr` from the moment they are read, and errors about a bad
entry name its position and field, never the key itself. Metrics and logs carry the name only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,63}$"


class ApiKeyConfig(BaseModel):
    """One key as configured: its secret, its name, its limits and the models it may use."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(pattern=_NAME, description="Shown in metrics and usage logs instead of the key.")
    key: SecretStr = Field(min_length=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)
    burst: float | None = Field(
        default=None, ge=1, description="Request bucket capacity; defaults to requests_per_minute."
    )
    tokens_burst: float | None = Field(
        default=None, ge=1, description="Token bucket capacity; defaults to tokens_per_minute."
    )
    models: list[str] | None = Field(
        default=None, description="Models this key may use (any accepted name); absent means all."
    )


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits of one key, without its secret (what a limiter needs; crosses to Ray)."""

    name: str
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrent: int | None = None
    burst: float | None = None
    tokens_burst: float | None = None

    @property
    def limited(self) -> bool:
        """Whether any limit applies (unlimited keys never call the limiter)."""
        return any(v is not None for v in (self.requests_per_minute, self.tokens_per_minute, self.max_concurrent))


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key, ready for the edge: secret bytes, limits, allowed canonical models."""

    secret: bytes
    limits: KeyLimits
    models: frozenset[str] | None = None  # canonical names; None means every model

    @property
    def name(self) -> str:
        return self.limits.name

    def __repr__(self) -> str:  # never show the secret
        return f"ApiKey(name={self.name!r})"

    def may_use(self, model: str) -> bool:
        """Whether this key may use the (canonical) ``model``."""
        return self.models is None or model in self.models


class KeysFileError(ValueError):
    """A keys file or key list that cannot be used; the message never contains key material."""


def _describe(exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors(include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        problems.append(f"  - {where}{'.' + loc if loc else ''}: {err['msg']}")
    return "\n".join(problems)


def parse_key_entries(entries: Iterable[Any], where: str = "keys") -> list[ApiKeyConfig]:
    """Validate structured key entries; errors name the entry and field, not the key."""
    configs = []
    problems = []
    for i, entry in enumerate(entries):
        if isinstance(entry, ApiKeyConfig):
            configs.append(entry)
            continue
        try:
            configs.append(ApiKeyConfig.model_validate(entry))
        except ValidationError as exc:
            problems.append(_describe(exc, f"{where}[{i}]"))
    if problems:
        raise KeysFileError("invalid API keys:\n" + "\n".join(problems))
    return configs


def parse_keys_text(text: str, source: str = "keys file") -> tuple[list[str], list[ApiKeyConfig]]:
    """A keys file's content as (plain keys, structured keys), whichever format it uses.

    A YAML/JSON mapping with a ``keys`` list is the structured format; anything else is read
    as one key per line.
    """
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        loaded = None
    if isinstance(loaded, dict) and "keys" in loaded:
        extra = sorted(set(loaded) - {"keys"})
        if extra:
            raise KeysFileError(f"{source}: unknown top-level field(s) {', '.join(extra)}; only 'keys' is allowed")
        entries = loaded["keys"] or []
        if not isinstance(entries, list):
            raise KeysFileError(f"{source}: 'keys' must be a list of entries")
        return [], parse_key_entries(entries, where=f"{source}: keys")
    plain = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            plain.append(line)
    return plain, []


def load_keys_file(path: Path) -> tuple[list[str], list[ApiKeyConfig]]:
    """Read ``path`` in either format (see :func:`parse_keys_text`)."""
    return parse_keys_text(path.read_text(), source=str(path))


def build_keyring(
    plain: Iterable[str],
    structured: Iterable[ApiKeyConfig],
    resolve_model: Callable[[str], str] | None = None,
) -> list[ApiKey]:
    """Every key, named and with canonical model lists; names and keys must be unique.

    Plain keys are named ``key-1``, ``key-2``... in order. ``resolve_model`` maps any accepted
    model name to its canonical one (and raises for an unknown model).
    """
    keys: list[ApiKey] = []
    for i, secret in enumerate(plain, start=1):
        keys.append(ApiKey(secret=secret.encode(), limits=KeyLimits(name=f"key-{i}")))
    for entry in structured:
        models = None
        if entry.models is not None:
            try:
                models = frozenset(resolve_model(m) if resolve_model else m for m in entry.models)
            except Exception as exc:  # noqa: BLE001 - named, with the key's name only
                raise KeysFileError(f"key '{entry.name}': {exc}") from None
        limits = KeyLimits(
            name=entry.name,
            requests_per_minute=entry.requests_per_minute,
            tokens_per_minute=entry.tokens_per_minute,
            max_concurrent=entry.max_concurrent,
            burst=entry.burst,
            tokens_burst=entry.tokens_burst,
        )
        keys.append(ApiKey(secret=entry.key.get_secret_value().encode(), limits=limits, models=models))
    names = [k.name for k in keys]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KeysFileError(f"API key names must be unique; repeated: {', '.join(duplicates)}")
    secrets = [k.secret for k in keys]
    if len(set(secrets)) != len(secrets):
        clashing = sorted({k.name for k in keys if secrets.count(k.secret) > 1})
        raise KeysFileError(f"the same key is configured more than once (names: {', '.join(clashing)})")
    return keys

