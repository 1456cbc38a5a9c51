"""The ingress's settings: one typed object, read when the app is built, never at import.

Values come from keyword arguments (the ``ingress:`` block of ``config.yaml``) and from
``LLM_``-prefixed environment variables, which is where secrets such as API keys belong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from serve_app.core.request_limits import RequestLimits
from serve_app.edge.keys import ApiKey, ApiKeyConfig, build_keyring, load_keys_file
from serve_app.state.config import StateSettings


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class IngressSettings(BaseSettings):
    """Everything the HTTP layer needs to know."""

    # Inputs stay out of validation errors: they may hold API keys.
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="forbid", hide_input_in_errors=True)

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer keys, without limits, named key-1, key-2...; no keys at all "
        "(here, in `keys` or in the file) means the API is open.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="Either one key per line ('#' starts a comment) or YAML/JSON "
        "`keys: [{name, key, requests_per_minute, tokens_per_minute, max_concurrent, burst, "
        "tokens_burst, models}]`.",
    )
    keys: list[ApiKeyConfig] = Field(
        default_factory=list,
        description="Named keys with limits (LLM_KEYS as JSON); same entries as the keys file.",
    )
    metrics_open: bool = Field(
        default=False,
        description="Serve GET /metrics without a key (otherwise Prometheus scrapes with a bearer token).",
    )
    usage_log: bool = Field(default=True, description="One JSON line per request on logger serve_app.usage.")
    limit_lease_ttl_s: float | None = Field(
        default=None,
        gt=0,
        description="A concurrency slot not released within this time is reclaimed (a replica died "
        "holding it); defaults to request_deadline_s + 60.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty turns CORS off."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="Largest request body (413 beyond, before any route)."
    )
    max_header_count: int = Field(default=100, ge=8, description="Most request headers (431 beyond).")
    max_header_bytes: int = Field(
        default=16 * 1024, ge=1024, description="Most bytes of request header names and values together (431 beyond)."
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Time a client has to send its whole body (408 beyond): a stalled upload does "
        "not hold an ingress slot for ever.",
    )
    limits: RequestLimits = Field(
        default_factory=RequestLimits,
        description="Per-request limits every API shares (n, stop sequences, top_logprobs, images, "
        "text, embedding inputs, completion prompts): a 400 naming the field beyond them.",
    )
    request_deadline_s: float = Field(
        default=600.0,
        gt=0,
        description="Our own generation deadline: 504 (x-should-retry: false) before the first "
        "byte, an in-band error after it; the generation is aborted either way.",
    )
    echo_request_id: bool = Field(
        default=True, description="Echo x-request-id on responses (Ray Serve's proxy already does)."
    )
    ollama_version: str = Field(default="0.12.10", description="Reported by GET /api/version.")
    state: StateSettings = Field(
        default_factory=StateSettings,
        description="The store behind the Responses and Conversations APIs (SQLite, or PostgreSQL "
        "through state.database_url_env).",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    def _key_sources(self) -> tuple[list[str], list[ApiKeyConfig]]:
        plain = [k.get_secret_value() for k in self.api_keys]
        structured = list(self.keys)
        if self.api_keys_file is not None:
            file_plain, file_structured = load_keys_file(self.api_keys_file)
            plain += file_plain
            structured += file_structured
        return plain, structured

    def load_api_keys(self) -> list[str]:
        """Every configured key's secret: the setting, ``keys`` and the keys file."""
        plain, structured = self._key_sources()
        return plain + [k.key.get_secret_value() for k in structured]

    def load_keyring(self, resolve_model: Callable[[str], str] | None = None) -> list[ApiKey]:
        """Every configured key with its name, limits and canonical allowed models."""
        plain, structured = self._key_sources()
        return build_keyring(plain, structured, resolve_model)

    def lease_ttl_s(self) -> float:
        """How long a concurrency slot may be held before it is reclaimed."""
        return self.limit_lease_ttl_s or self.request_deadline_s + 60.0
