"""Golden tests: pydantic/FastAPI validation failures as our 400s with the right ``param``."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from serve_app.apis.ollama import schemas as ollama_wire
from serve_app.apis.openai import schemas as openai_wire
from serve_app.transport.validation_errors import param_of_location, validation_error_to_invalid_request


@pytest.mark.parametrize(
    ("loc", "body", "param"),
    [
        (("body", "temperature"), {"temperature": 9}, "temperature"),
        (("body", "messages", 0, "content"), {"messages": [{"content": 1}]}, "messages[0].content"),
        (("body", "messages", 0, "user", "content"), {"messages": [{"role": "user"}]}, "messages[0].content"),
        (("body", "user"), {"user": 5}, "user"),  # a real field named like a union tag
        (("body", "stop", "str"), {"stop": ["a"] * 17}, "stop"),
        (("body", "stop", "list[str]"), {"stop": ["a"] * 17}, "stop"),
        (("body", "input", "constrained-str"), {"input": ""}, "input"),
        (("body", "input", "list[constrained-str]", 0), {"input": [""]}, "input[0]"),
        (("body", "model"), {}, "model"),
        (("body",), None, None),
        (("body", "options", "temperature"), {"options": {"temperature": 3}}, "options.temperature"),
        (("body", "response_format", "json_schema", "json_schema", "name"),
         {"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.json_schema.name"),
    ],
)
def test_param_of_location_with_body(loc: tuple[Any, ...], body: object, param: str | None) -> None:
    assert param_of_location(loc, body) == param


@pytest.mark.parametrize(
    ("loc", "param"),
    [
        (("body", "temperature"), "temperature"),
        (("body", "messages", 0, "content"), "messages[0].content"),
        (("body", "stop", "list[str]"), "stop"),
        (("body", "input", "constrained-str"), "input"),
        (("body", "tool_choice", "function-after[check(), str]"), "tool_choice"),
        (("query", "limit"), "query.limit"),
        ((), None),
    ],
)
def test_param_of_location_without_body(loc: tuple[Any, ...], param: str | None) -> None:
    assert param_of_location(loc) == param


def request_error(model: type, body: Any) -> RequestValidationError:
    """What FastAPI raises for ``body`` against ``model``."""
    try:
        model.model_validate(body)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        return RequestValidationError(errors, body=body)
    raise AssertionError("body was valid")


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("model", "body", "param", "message_part"),
    [
        (openai_wire.ChatCompletionRequest, {**CHAT, "temperature": 2.5}, "temperature", "less than or equal to 2"),
        (openai_wire.ChatCompletionRequest, {**CHAT, "n": 0}, "n", "greater than or equal to 1"),
        (openai_wire.ChatCompletionRequest, {**CHAT, "bogus": 1}, "bogus", "Unrecognized request argument supplied: bogus"),
        (openai_wire.ChatCompletionRequest, {"model": "m", "messages": [{"role": "user"}]}, "messages[0].content", "Field required"),
        (openai_wire.ChatCompletionRequest, {"model": "m", "messages": [{"role": "x", "content": "y"}]}, "messages[0]", "does not match any of the expected tags"),
        (openai_wire.ChatCompletionRequest, {**CHAT, "tool_choice": "required"}, None, "tool_choice needs 'tools'"),
        (openai_wire.EmbeddingsRequest, {"model": "m", "input": ""}, "input", "at least 1 character"),
        (ollama_wire.GenerateRequest, {"model": "m", "options": {"top_p": 0}}, "options.top_p", "greater than 0"),
        (ollama_wire.ChatRequest, {"model": "m", "messages": [{"role": "bot"}]}, "messages[0].role", "Input should be"),
    ],
)
def test_validation_error_to_invalid_request(model: type, body: Any, param: str | None, message_part: str) -> None:
    error = validation_error_to_invalid_request(request_error(model, body))
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert message_part in error.message


def test_json_invalid_and_missing_body() -> None:
    invalid = RequestValidationError(
        [{"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "ctx": {"error": "Expecting value"}}]
    )
    error = validation_error_to_invalid_request(invalid)
    assert error.message == "We could not parse the JSON body of your request. (Expecting value)"
    assert error.param is None
    missing = RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required"}], body=None)
    assert validation_error_to_invalid_request(missing).message == "A JSON request body is required."
    assert validation_error_to_invalid_request(RequestValidationError([])).message == "Invalid request body."


def test_message_counts_other_problems() -> None:
    error = validation_error_to_invalid_request(
        request_error(openai_wire.ChatCompletionRequest, {**CHAT, "temperature": 9, "top_p": 9, "n": 0})
    )
    assert error.message == "Invalid value for 'temperature': Input should be less than or equal to 2 (and 2 more problems)"
