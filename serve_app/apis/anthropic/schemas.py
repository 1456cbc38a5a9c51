"""Anthropic Messages API request bodies as pydantic models, with Anthropic's ranges.

Unknown top-level fields are refused, as Anthropic's API refuses them; content blocks and other
nested objects ignore fields they do not know (``cache_control``, ``citations``...), which SDKs
and coding agents add freely. Fields Anthropic defines that we accept but cannot honour are
listed in ``UNHONOURED_FIELDS`` and named back in the ``x-unsupported-params`` header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from serve_app.transport.schema_rules import BASE64_STRING, NON_EMPTY_ARRAY, rules, when_then


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- content blocks -------------------------------------------------------------------------


class TextBlock(_Lenient):
    type: Literal["text"]
    text: str


class Base64ImageSource(_Lenient):
    type: Literal["base64"]
    media_type: str = Field(min_length=1)
    data: Annotated[str, WithJsonSchema(BASE64_STRING)]


class UrlImageSource(_Lenient):
    type: Literal["url"]
    url: str


class FileImageSource(_Lenient):
    type: Literal["file"]
    file_id: str


# URL and file sources are refused with a 400 (nothing is fetched), so they are not in the document.
ImageSource = Annotated[
    Base64ImageSource | SkipJsonSchema[UrlImageSource] | SkipJsonSchema[FileImageSource], Field(discriminator="type")
]


class ImageBlock(_Lenient):
    type: Literal["image"]
    source: ImageSource


ToolResultContent = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Lenient):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Lenient):
    type: Literal["redacted_thinking"]
    data: str = ""


class DocumentBlock(_Lenient):
    """Accepted by the schema so that the refusal can say what is not supported."""

    type: Literal["document"]
    source: dict[str, Any] = Field(default_factory=dict)


ContentBlock = Annotated[
    # Documents are refused with a 400 (send their text), so they are not in the document.
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock
    | SkipJsonSchema[DocumentBlock],
    Field(discriminator="type"),
]


class Message(_Lenient):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


# -- tools, thinking, output ----------------------------------------------------------------


class Tool(_Lenient):
    """A custom tool; Anthropic's server tools (``type`` such as ``web_search_20250305``) are
    accepted here and refused by the adapter with a clear message."""

    # The document shows what is served: a custom tool with its input schema.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["name", "input_schema"]})

    name: str = Field(min_length=1, max_length=128)
    type: Annotated[str, WithJsonSchema({"type": "string", "const": "custom"})] | None = None
    description: str | None = None
    input_schema: dict[str, Any] | SkipJsonSchema[None] = None


class ToolChoiceAuto(_Lenient):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(_Lenient):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(_Lenient):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(_Lenient):
    type: Literal["none"]


ToolChoice = Annotated[ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")]


class Thinking(_Lenient):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=1)] | None = None


class JsonOutputFormat(_Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Lenient):
    effort: str | None = None
    format: JsonOutputFormat | None = None


class Metadata(_Lenient):
    user_id: str | None = None


# -- requests -------------------------------------------------------------------------------

# Accepted, not honoured (reported in x-unsupported-params); the adapter adds nested ones.
UNHONOURED_FIELDS = (
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "inference_geo",
    "speed",
    "cache_control",
    "diagnostics",
)


class CountTokensRequest(_Wire):
    """``POST /v1/messages/count_tokens``: what shapes the prompt, nothing that samples."""

    # The adapter's rule, for the document: 'any' and 'tool' need tools (and 'tool' must name
    # one of them, which JSON Schema cannot say).
    model_config = ConfigDict(
        json_schema_extra=rules(
            when_then("tool_choice", {"type": "object", "required": ["type"],
                                      "properties": {"type": {"enum": ["any", "tool"]}}}, "tools", NON_EMPTY_ARRAY)
        )
    )

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    # Accepted for compatibility, not honoured.
    mcp_servers: list[dict[str, Any]] | None = None
    context_management: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``."""

    max_tokens: Annotated[int, Field(ge=1)]
    stream: bool | None = False
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: list[str] | None = None  # how many: RequestLimits.max_stop_sequences
    metadata: Metadata | None = None
    # Accepted for compatibility, not honoured.
    service_tier: str | None = None
    container: str | dict[str, Any] | None = None
    inference_geo: str | None = None
    speed: str | None = None
    diagnostics: dict[str, Any] | None = None
