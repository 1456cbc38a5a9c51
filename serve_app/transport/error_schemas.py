"""The error bodies of each API as pydantic models, for the OpenAPI document.

The bodies themselves are built by :mod:`serve_app.transport.error_rendering`; a unit test
validates what it renders against these models, so the document cannot drift from the wire.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(BaseModel):
    """OpenAI's envelope, on every ``/v1/*`` route but Anthropic's."""

    model_config = ConfigDict(extra="forbid", title="OpenAIError")

    error: OpenAIErrorDetail


class OllamaErrorBody(BaseModel):
    """Ollama's ``{"error": "..."}``, on ``/api/*``."""

    model_config = ConfigDict(extra="forbid", title="OllamaError")

    error: str


class AnthropicErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """Anthropic's envelope, on ``/v1/messages*``."""

    model_config = ConfigDict(extra="forbid", title="AnthropicError")

    type: Literal["error"]
    error: AnthropicErrorDetail
    request_id: str | None
