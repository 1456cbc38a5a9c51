"""OpenAI request bodies as pydantic models, with OpenAI's ranges.

Unknown fields are rejected (as OpenAI does: "Unrecognized request argument supplied");
fields OpenAI defines that we accept but cannot honour are declared in ``UNHONOURED_*`` and
named back to the client in the ``x-unsupported-params`` header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from serve_app.transport.schema_rules import (
    IMAGE_DATA_URL,
    NON_EMPTY_ARRAY,
    NON_NULL_OBJECT,
    TRUE,
    Schema,
    rules,
    when_then,
    when_then_not,
)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    """Nested objects: OpenAI SDKs add fields over time; unknown ones are ignored there."""

    model_config = ConfigDict(extra="ignore")


# -- messages -------------------------------------------------------------------------------


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageUrl(_Lenient):
    url: Annotated[str, WithJsonSchema(IMAGE_DATA_URL)]
    detail: Literal["auto", "low", "high"] | None = None


class ImageContentPart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageUrl


class RefusalContentPart(_Lenient):
    type: Literal["refusal"]
    refusal: str


UserContentPart = Annotated[TextContentPart | ImageContentPart, Field(discriminator="type")]
AssistantContentPart = Annotated[TextContentPart | RefusalContentPart, Field(discriminator="type")]


class FunctionCallWire(_Lenient):
    name: str
    arguments: str


class ToolCallWire(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallWire


class SystemMessage(_Lenient):
    role: Literal["system", "developer"]
    content: str | list[TextContentPart]
    name: str | None = None


class UserMessage(_Lenient):
    role: Literal["user"]
    content: str | list[UserContentPart]
    name: str | None = None


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: str | list[AssistantContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallWire] | None = None
    refusal: str | None = None
    reasoning_content: str | None = None


class ToolMessage(_Lenient):
    role: Literal["tool"]
    content: str | list[TextContentPart]
    tool_call_id: str


ChatMessageWire = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


# -- tools and formats ----------------------------------------------------------------------


class FunctionDefinition(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Lenient):
    type: Literal["text"]


class ResponseFormatJsonObject(_Lenient):
    type: Literal["json_object"]


class ResponseFormatJsonSchema(_Lenient):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormatWire = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema,
    Field(discriminator="type"),
]


class StreamOptions(_Lenient):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# -- shared sampling fields -----------------------------------------------------------------

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
StopWire = str | list[str]  # how many: RequestLimits.max_stop_sequences


class _SamplingFields(_Wire):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stop: StopWire | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1)] | None = 1  # at most RequestLimits.max_n
    # Keys are token ids (as strings, JSON's only key type); the adapter refuses others.
    logit_bias: Annotated[
        dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    ] | None = None
    user: str | None = None
    # vLLM's extensions, sent by clients through extra_body.
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    ignore_eos: bool | None = None  # generate max_tokens whatever the model says (benchmarks)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when 'stream' is true")
        return self


# -- chat -----------------------------------------------------------------------------------

UNHONOURED_CHAT_FIELDS = (
    "store",
    "metadata",
    "service_tier",
    "reasoning_effort",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
    "parallel_tool_calls",
    "functions",
    "function_call",
)


_STREAM_OPTIONS_NEED_STREAM = when_then("stream_options", NON_NULL_OBJECT, "stream", TRUE)


class ChatCompletionRequest(_SamplingFields):
    # The validator's rules below, for the document (a named tool_choice must also name one of
    # `tools`, which JSON Schema cannot say).
    model_config = ConfigDict(
        json_schema_extra=rules(
            _STREAM_OPTIONS_NEED_STREAM,
            when_then("top_logprobs", {"type": "integer"}, "logprobs", TRUE),
            when_then("tool_choice", {"anyOf": [{"const": "required"}, NON_NULL_OBJECT]}, "tools", NON_EMPTY_ARRAY),
        )
    )
    messages: list[ChatMessageWire] = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0)] | None = None  # at most RequestLimits.max_top_logprobs
    response_format: ResponseFormatWire | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Accepted for compatibility, not honoured: reported in x-unsupported-params.
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires 'logprobs' to be true")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            if isinstance(self.tool_choice, NamedToolChoice) or self.tool_choice == "required":
                raise ValueError("tool_choice needs 'tools'")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools:
            names = {t.function.name for t in self.tools}
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names '{self.tool_choice.function.name}', which is not in 'tools'")
        return self


# -- completions ----------------------------------------------------------------------------

# An empty prompt has no token to start from: vLLM refuses it, so the schema does first.
PromptWire = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    | Annotated[list[int], Field(min_length=1)]
    | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
)

UNHONOURED_COMPLETION_FIELDS = ("best_of",)

# Echo repeats the prompt's text, which a prompt of token ids does not have (the adapter
# refuses the pair with a 400); the document says so.
_TOKEN_ID_PROMPT: Schema = {"type": "array", "items": {"type": ["integer", "array"]}}
_ECHO_NEEDS_TEXT = when_then_not("echo", TRUE, "prompt", _TOKEN_ID_PROMPT)


class CompletionRequest(_SamplingFields):
    model_config = ConfigDict(json_schema_extra=rules(_STREAM_OPTIONS_NEED_STREAM, _ECHO_NEEDS_TEXT))
    prompt: PromptWire
    suffix: str | None = None
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = 16  # the legacy API's default
    best_of: Annotated[int, Field(ge=1)] | None = None


# -- embeddings -----------------------------------------------------------------------------


class EmbeddingsRequest(_Wire):
    model: str = Field(min_length=1)
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] | None = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


# -- responses (for the OpenAPI document and tests; routes build plain dicts) ---------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    state: str | None = None
    # As vLLM lists them: the base model a LoRA adapter runs on (``parent`` null for a base).
    root: str | None = None
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
