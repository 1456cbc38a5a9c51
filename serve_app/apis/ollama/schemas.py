"""Ollama request bodies as pydantic models.

Ollama (a Go server) ignores unknown JSON fields; we accept them too but name them back in the
``x-unsupported-params`` header, so nothing is dropped silently.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from serve_app.transport.schema_rules import BASE64_STRING, rules, when_then_not

# Seconds (a number, or one written as a string) or a Go duration ("5m", "1h30m", "-1m");
# the adapter refuses other strings with a 400.
_KEEP_ALIVE_PATTERN = (
    r"^\s*(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
    r"|[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|ms|s|m|h))+)?\s*$"
)
KeepAlive = Annotated[str, WithJsonSchema({"type": "string", "pattern": _KEEP_ALIVE_PATTERN})] | int | float | None
Think = bool | Literal["high", "medium", "low"] | None
Format = Literal["json", ""] | dict[str, Any] | None


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unknown_fields(self) -> list[str]:
        """Top-level fields the client sent that Ollama does not define."""
        return sorted(self.model_extra or {})


class Options(BaseModel):
    """Ollama's runtime ``options``; see ``serve_app.apis.ollama.adapter`` for what maps where."""

    model_config = ConfigDict(extra="allow")

    # Honoured (mapped to the engine's sampling parameters or the context check).
    # Positive, or -1 (no limit) or -2 (fill the context); the adapter refuses the rest.
    num_predict: Annotated[
        int, WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"type": "integer", "enum": [-1, -2]}]})
    ] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    num_ctx: Annotated[int, Field(ge=1)] | None = None
    # Tokens kept from the start of a prompt cut to fit the context; -1 keeps the start whole.
    num_keep: Annotated[int, Field(ge=-1)] | None = None
    # Defined by Ollama, not honoured here (llama.cpp or hardware specific).
    typical_p: float | None = None
    repeat_last_n: int | None = None
    penalize_newline: bool | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    tfs_z: float | None = None
    numa: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    vocab_only: bool | None = None
    num_thread: int | None = None


HONOURED_OPTIONS = frozenset(
    {
        "num_predict",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "num_ctx",
        "num_keep",
    }
)


class ToolFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    index: int | None = None


class ToolCallWire(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None  # sent by Open WebUI (and OpenAI-minded clients); Ollama omits it
    function: ToolFunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[Annotated[str, WithJsonSchema(BASE64_STRING)]] | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_name: str | None = None
    # Open WebUI answers a call with the call's id instead of Ollama's tool_name.
    tool_call_id: str | None = None


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: ToolFunction


class _GenerationFields(_Wire):
    model: str = Field(min_length=1)
    stream: bool | None = True
    format: Format = None
    options: Options | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0)] | None = None  # at most RequestLimits.max_top_logprobs
    # Ollama 0.12.6+: absent means true. truncate: fit an over-long prompt into the context
    # (false: 400); shift: go on generating when the context fills (false: stop, "length").
    truncate: bool | None = None
    shift: bool | None = None


class GenerateRequest(_GenerationFields):
    # A raw prompt has no template to place images in (the adapter refuses them).
    model_config = ConfigDict(
        json_schema_extra=rules(when_then_not("raw", {"const": True}, "images", {"type": "array", "minItems": 1}))
    )

    prompt: str | None = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = False
    images: list[Annotated[str, WithJsonSchema(BASE64_STRING)]] | None = None


class ChatRequest(_GenerationFields):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None


class EmbedRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] = ""
    truncate: bool | None = True
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive = None


class LegacyEmbeddingsRequest(_Wire):
    model: str = Field(min_length=1)
    prompt: str = ""
    options: Options | None = None
    keep_alive: KeepAlive = None


class ShowRequest(_Wire):
    model: str | None = None
    name: str | None = None  # the older spelling, still sent by some clients
    verbose: bool | None = None
