"""The ingress's settings: one typed object, read when the app is built, never at import.

Values come from keyword arguments (the ``ingress:`` block of ``config.yaml``) and from
``LLM_``-prefixed environment variables, which is where secrets such as API keys belong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class IngressSettings(BaseSettings):
    """Everything the HTTP layer needs to know."""

    model_config = SettingsConfigDict(env_prefix="LLM_", extra="forbid")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted bearer keys; empty means the API is open."
    )
    api_keys_file: Path | None = Field(
        default=None, description="A file with one key per line ('#' starts a comment)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty turns CORS off."
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    max_n: int = Field(default=8, ge=1, description="Largest accepted 'n' (choices per request).")
    max_embedding_inputs: int = Field(default=2048, ge=1)
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

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    def load_api_keys(self) -> list[str]:
        """All configured keys, from the setting and the keys file."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(line)
        return keys
