"""The one internal request, chunk and result vocabulary shared by both APIs.

The OpenAI and Ollama layers are pure adapters to and from these types; engines consume
:class:`GenerationRequest` and produce :class:`GenerationChunk`. Shapes follow OpenAI's
chat-completion objects because that is the richer of the two wire formats.

Requests are pydantic models (validated once at the edge); chunks are slotted dataclasses
because they sit on the per-token hot path and cross the Ray handle hop, where pydantic's
construction and pickling cost is measurable.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "tool_calls"]
GenerationKind = Literal["chat", "completion"]
# "unloaded": no replica now; the next request loads it (a model that scales to zero).
ModelState = Literal["ready", "starting", "failed", "unloaded"]


def new_request_id() -> str:
    """A fresh opaque request id (uuid4 hex)."""
    return uuid.uuid4().hex


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Strict):
    """An image carried inline: raw base64 bytes plus their media type."""

    type: Literal["image"] = "image"
    media_type: str = "image/png"
    data_base64: str


ContentPart = TextPart | ImagePart


class FunctionCall(_Strict):
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI carries it


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        """The message's text, joining text parts and ignoring images."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def images(self) -> list[ImagePart]:
        """The inline images of the message, in order."""
        if isinstance(self.content, list):
            return [p for p in self.content if isinstance(p, ImagePart)]
        return []


class SamplingParams(_Strict):
    """Sampling controls in vLLM's vocabulary; ``None`` means the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None  # the JSON schema itself, not OpenAI's wrapper


class ToolSpec(_Strict):
    """A function the model may call, as OpenAI's ``tools[].function``."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ContextFit(_Strict):
    """How a generation is fitted into the context instead of being refused (Ollama's rules).

    Without it (OpenAI), a prompt plus ``max_tokens`` over the context is a 400.
    """

    # Make the prompt fit: drop the oldest messages (every system message and the last message
    # stay), then, if it is still too long, tokens from the middle, keeping the first
    # ``keep_tokens``. False: an over-long prompt is refused.
    truncate: bool = True
    keep_tokens: int = Field(default=4, ge=0)
    # Ollama's context shift: when the context fills, it drops old tokens and goes on generating.
    # An engine that cannot shift (vLLM) instead leaves room for the output when it has to cut
    # a prompt over the context (one that fits is never cut). Either way, output beyond the
    # context ends with finish "length", never a 400.
    shift: bool = True


class GenerationRequest(_Strict):
    """One generation, as both APIs describe it after translation."""

    request_id: str = Field(default_factory=new_request_id)
    model: str
    kind: GenerationKind = "chat"
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: str | list[int] | None = None
    suffix: str | None = None
    echo: bool = False
    raw: bool = False
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    response_format: ResponseFormat = Field(default_factory=ResponseFormat)
    tools: list[ToolSpec] | None = None
    # "auto" | "none" | "required" | a function name to force
    tool_choice: str = "auto"
    think: bool | str | None = None
    context_limit: int | None = None  # Ollama num_ctx: a per-request cap on prompt + output
    context_fit: ContextFit | None = None  # None: a prompt or output over the context is refused
    include_usage: bool = True
    user: str | None = None
    submitted_at: float | None = None  # wall clock when the ingress handed it on (queue wait)
    keep_alive_s: float | None = None  # Ollama keep_alive: idle seconds before unloading; <0 never
    # ``model`` is a LoRA adapter of this base model (set by the gateway): the base's replicas
    # serve it, with the adapter applied. None: ``model`` is a base model.
    base_model: str | None = None

    def has_images(self) -> bool:
        """Whether any message carries an image."""
        return any(m.images() for m in self.messages)


class EmbeddingRequest(_Strict):
    request_id: str = Field(default_factory=new_request_id)
    model: str
    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    truncate: bool = True
    keep_alive_s: float | None = None  # as GenerationRequest.keep_alive_s


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(slots=True)
class ToolCallDelta:
    """A complete tool call delivered in one chunk (engines parse calls whole)."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache already held

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class GenerationChunk:
    """One step of one choice's output.

    ``usage`` is set only on the last chunk of a choice (cumulative for that choice);
    ``finish_reason`` marks the end of that choice.
    """

    index: int = 0
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    # With finish "stop": the stop string that ended the choice (None: the model's own end).
    stop_sequence: str | None = None
    usage: Usage | None = None
    queued_s: float | None = None  # on the first chunk: ingress submission to replica start
    # On the first chunk: the prompt's length in tokens as the engine rendered it (Anthropic's
    # message_start reports it before any usage exists).
    prompt_tokens: int | None = None


@dataclass(slots=True)
class ChoiceResult:
    """One choice's complete output: the fold of its chunks."""

    index: int
    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None


@dataclass(slots=True)
class GenerationResult:
    choices: list[ChoiceResult]
    usage: Usage
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


class ModelCard(_Strict):
    """What the server knows about a configured model, shown by both APIs."""

    name: str  # canonical name, Ollama style ("smollm2:135m")
    aliases: list[str] = Field(default_factory=list)
    kind: Literal["generate", "embed"] = "generate"
    context_length: int = 2048
    embedding_dimensions: int | None = None
    supports_dimensions: bool = False  # Matryoshka-style truncation allowed
    capabilities: list[str] = Field(default_factory=list)  # Ollama vocabulary
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "safetensors"
    size_bytes: int = 0  # the served model's files on disk (Ollama's ``size``)
    size_vram_bytes: int = 0  # of which held in accelerator memory per replica (0 on CPU)
    digest: str | None = None  # sha256 hex of the model's files; one value everywhere it is shown
    owned_by: str = "serving-cluster"
    created: int = Field(default_factory=lambda: int(time.time()))
    # A LoRA adapter: the base model whose replicas serve it (None for a base model).
    base_model: str | None = None
    # A base model with an adapter folder: ``<name>:<adapter>`` names an adapter of it that is
    # not listed in the config, loaded from the folder on first use.
    loads_unlisted_adapters: bool = False


class ModelStatus(_Strict):
    card: ModelCard
    state: ModelState = "ready"
    replicas: int = 1
    message: str | None = None
    expires_at: float | None = None  # epoch seconds it unloads when idle; None: it stays loaded
    on_demand: bool = False  # scales to zero: loaded by the first request, unloaded when idle
