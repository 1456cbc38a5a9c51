"""Assistants API (v2) request bodies, with OpenAI's bounds.

Unknown top-level fields are refused, as OpenAI refuses them; nested objects ignore what they do
not know. Tools other than functions (``file_search``, ``code_interpreter``) and file ids are
accepted by the schema so that the refusal can name them (``objects.check_tools``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from serve_app.apis.openai.schemas import FunctionDefinition, ResponseFormatWire
from serve_app.state.responses.schemas import Metadata
from serve_app.transport.schema_rules import IMAGE_DATA_URL


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ToolWire(_Lenient):
    # Other tool types are refused with a clear 400 (only function tools run here), and a
    # function tool needs its function: the document says what is served.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"required": ["type", "function"]})

    type: Annotated[str, Field(min_length=1), WithJsonSchema({"type": "string", "const": "function"})]
    function: FunctionDefinition | SkipJsonSchema[None] = None


def _no_file_ids(value: list[Any]) -> list[Any]:
    if value:
        raise ValueError("File ids are not supported on this server (no Files API).")
    return value


# Lists of files or vector stores: accepted empty (as SDKs send them), refused otherwise.
NoFileIds = Annotated[list[Any], AfterValidator(_no_file_ids), WithJsonSchema({"type": "array", "maxItems": 0})]


class CodeInterpreterResources(_Wire):
    file_ids: NoFileIds | None = None


class FileSearchResources(_Wire):
    vector_store_ids: NoFileIds | None = None
    vector_stores: NoFileIds | None = None


class ToolResources(_Wire):
    code_interpreter: CodeInterpreterResources | None = None
    file_search: FileSearchResources | None = None


Tools = Annotated[list[ToolWire], Field(max_length=128)]
ResponseFormat = Literal["auto"] | ResponseFormatWire
Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]


# -- assistants -----------------------------------------------------------------------------


class AssistantFields(_Wire):
    name: Annotated[str, Field(max_length=256)] | None = None
    description: Annotated[str, Field(max_length=512)] | None = None
    instructions: Annotated[str, Field(max_length=256_000)] | None = None
    tools: Tools | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None  # accepted, not honoured


class AssistantCreate(AssistantFields):
    model: str = Field(min_length=1)


class AssistantUpdate(AssistantFields):
    # May be left out, never null (refused with a 400), so the document has no null.
    model: Annotated[str, Field(min_length=1)] | SkipJsonSchema[None] = None


# -- threads and messages -------------------------------------------------------------------


class TextPartWire(_Lenient):
    type: Literal["text"]
    text: str


class ImageUrlWire(_Lenient):
    url: Annotated[str, WithJsonSchema(IMAGE_DATA_URL)]
    detail: Literal["auto", "low", "high"] | None = None


class ImageUrlPartWire(_Lenient):
    type: Literal["image_url"]
    image_url: ImageUrlWire


class ImageFilePartWire(_Lenient):
    type: Literal["image_file"]
    image_file: dict[str, Any]


# Image files are refused with a clear 400 (no Files API), so they are not in the document.
MessagePart = Annotated[TextPartWire | ImageUrlPartWire | SkipJsonSchema[ImageFilePartWire], Field(discriminator="type")]


class MessageCreate(_Wire):
    role: Literal["user", "assistant"]
    content: str | Annotated[list[MessagePart], Field(min_length=1)]
    attachments: NoFileIds | None = None
    metadata: Metadata | None = None


class MetadataUpdate(_Wire):
    metadata: Metadata | None = None


class ThreadCreate(_Wire):
    messages: Annotated[list[MessageCreate], Field(max_length=32)] | None = None
    tool_resources: ToolResources | None = None
    metadata: Metadata | None = None


class ThreadUpdate(_Wire):
    tool_resources: ToolResources | None = None
    metadata: Metadata | None = None


# -- runs -----------------------------------------------------------------------------------


class TruncationStrategy(_Lenient):
    type: Literal["auto", "last_messages"]
    last_messages: Annotated[int, Field(ge=1)] | None = None


class NamedFunction(_Lenient):
    name: str


class ToolChoiceObject(_Lenient):
    type: str
    function: NamedFunction | None = None


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceObject


class _RunFields(_Wire):
    assistant_id: str = Field(min_length=1)
    model: Annotated[str, Field(min_length=1)] | None = None
    instructions: str | None = None
    tools: Tools | None = None
    metadata: Metadata | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool | None = None
    max_prompt_tokens: Annotated[int, Field(ge=256)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None  # accepted, not honoured


class RunCreate(_RunFields):
    additional_instructions: str | None = None
    additional_messages: Annotated[list[MessageCreate], Field(max_length=32)] | None = None


class ThreadAndRunCreate(_RunFields):
    thread: ThreadCreate | None = None
    tool_resources: ToolResources | None = None


class ToolOutput(_Lenient):
    tool_call_id: str = Field(min_length=1)
    output: str = ""


class SubmitToolOutputs(_Wire):
    tool_outputs: Annotated[list[ToolOutput], Field(min_length=1)]
    stream: bool | None = None


# Fields accepted for compatibility that do not change what the model does.
UNHONOURED_RUN_FIELDS = ("max_prompt_tokens", "parallel_tool_calls", "reasoning_effort")
