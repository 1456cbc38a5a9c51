"""Responses API request bodies and input items as pydantic models (OpenAI's shapes).

The top level rejects unknown fields, as OpenAI does; nested items ignore fields they do not
know, because SDKs send back output items (with ``status``, ``annotations``...) as input.
Fields OpenAI defines that we accept but cannot honour are listed in ``UNHONOURED_FIELDS`` and
named in the ``x-unsupported-params`` header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema, model_validator
from pydantic.json_schema import SkipJsonSchema

from serve_app.transport.schema_rules import IMAGE_DATA_URL, NON_EMPTY_ARRAY, not_both, rules, when_then, when_then_not


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


MetadataValue = Annotated[str, Field(max_length=512)]
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], MetadataValue], Field(max_length=16)]

# -- content parts --------------------------------------------------------------------------


class InputText(_Lenient):
    type: Literal["input_text"]
    text: str


class InputImage(_Lenient):
    # Only base64 data URLs are served; file ids are refused with a 400 (no Files API).
    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["type", "image_url"]})

    type: Literal["input_image"]
    image_url: Annotated[str, WithJsonSchema(IMAGE_DATA_URL)] | SkipJsonSchema[None] = None
    file_id: SkipJsonSchema[str | None] = None
    detail: str | None = None


class InputFile(_Lenient):
    type: Literal["input_file"]
    file_id: str | None = None
    file_data: str | None = None
    filename: str | None = None


class OutputText(_Lenient):
    type: Literal["output_text"]
    text: str


class Refusal(_Lenient):
    type: Literal["refusal"]
    refusal: str


# Files are refused with a 400 (no Files API), so they are not in the document.
ContentPart = Annotated[
    InputText | InputImage | SkipJsonSchema[InputFile] | OutputText | Refusal, Field(discriminator="type")
]

# -- items ----------------------------------------------------------------------------------


class MessageItem(_Lenient):
    type: Literal["message"] = "message"
    id: str | None = Field(default=None, max_length=64)
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Lenient):
    type: Literal["function_call"]
    id: str | None = Field(default=None, max_length=64)
    call_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1)
    arguments: str


class FunctionCallOutputItem(_Lenient):
    type: Literal["function_call_output"]
    id: str | None = Field(default=None, max_length=64)
    call_id: str = Field(min_length=1, max_length=64)
    output: str | list[ContentPart]


class ReasoningItem(_Lenient):
    type: Literal["reasoning"]
    id: str | None = Field(default=None, max_length=64)
    summary: list[dict[str, Any]] = Field(default_factory=list)
    content: list[dict[str, Any]] | None = None
    encrypted_content: str | None = None


class ItemReference(_Lenient):
    type: Literal["item_reference"]
    id: str = Field(min_length=1, max_length=64)


def _item_type(value: Any) -> str:
    # EasyInputMessage: a message may leave out "type".
    if isinstance(value, dict):
        return str(value.get("type") or "message")
    return str(getattr(value, "type", "message"))


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    # Refused with a clear 400 (no item store to resolve it from), so not in the document.
    | Annotated[SkipJsonSchema[ItemReference], Tag("item_reference")],
    Discriminator(_item_type),
]

# -- tools and formats ----------------------------------------------------------------------


class FunctionTool(_Lenient):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class OtherTool(_Lenient):
    """A hosted tool (web_search, file_search, mcp...): named back as unsupported."""

    type: str


def _tool_type(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else "other"


# Hosted tools are refused with a 400 naming them, so only function tools are in the document.
Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[SkipJsonSchema[OtherTool], Tag("other")],
    Discriminator(_tool_type),
]


class FunctionToolChoice(_Lenient):
    type: Literal["function"]
    name: str


class TextFormatText(_Lenient):
    type: Literal["text"]


class TextFormatJsonObject(_Lenient):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Lenient):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextConfig(_Lenient):
    format: TextFormat | None = None
    verbosity: str | None = None


class ConversationRef(_Lenient):
    id: str


# -- the request ----------------------------------------------------------------------------

UNHONOURED_FIELDS = (
    "reasoning",
    "service_tier",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "max_tool_calls",
    "top_logprobs",
    "context_management",
    "stream_options",
    "background_options",
    "moderation",
    "access_programs",
    "image",
)


class ResponseCreateRequest(_Wire):
    # The validator's rules below, for the document (a function tool_choice must also name
    # one of `tools`, which JSON Schema cannot say).
    model_config = ConfigDict(
        json_schema_extra=rules(
            not_both("previous_response_id", "conversation"),
            when_then_not("background", {"const": True}, "store", {"const": False}),
            when_then("tool_choice", {"const": "required"}, "tools", NON_EMPTY_ARRAY),
            when_then("tool_choice", {"type": "object", "required": ["type"], "properties": {"type": {"const": "function"}}},
                      "tools", NON_EMPTY_ARRAY),
        )
    )
    model: str = Field(min_length=1)
    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    store: bool | None = True
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=64)
    conversation: Annotated[str, Field(min_length=1, max_length=64)] | ConversationRef | None = None
    metadata: Metadata | None = None
    user: str | None = None
    stream: bool | None = False
    background: bool | None = False
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # Accepted for compatibility, not honoured: reported in x-unsupported-params.
    reasoning: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    safety_identifier: str | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0)] | None = None  # at most RequestLimits.max_top_logprobs
    context_management: list[dict[str, Any]] | None = None
    stream_options: dict[str, Any] | None = None
    background_options: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    access_programs: Any = None
    image: Any = None

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, ConversationRef):
            return self.conversation.id
        return self.conversation

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ResponseCreateRequest:
        if self.previous_response_id is not None and self.conversation is not None:
            raise ValueError("'previous_response_id' and 'conversation' cannot be used together")
        if self.background and self.store is False:
            raise ValueError("background responses need 'store' to be true")
        if isinstance(self.tool_choice, FunctionToolChoice):
            names = {t.name for t in self.tools or [] if isinstance(t, FunctionTool)}
            if self.tool_choice.name not in names:
                raise ValueError(f"tool_choice names '{self.tool_choice.name}', which is not in 'tools'")
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs 'tools'")
        return self

