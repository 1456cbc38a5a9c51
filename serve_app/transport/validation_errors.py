"""FastAPI's request-validation errors as our 400s, naming the offending field."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from serve_app.core.errors import InvalidRequest

_NO_BODY = object()
# The names pydantic gives union members in error locations: "str", "list[str]",
# "constrained-str", "function-after[...]", "json-or-python[...]", "nullable[int]"...
_TYPE_TAG = re.compile(r"^(str|int|float|bool|bytes|none|list|dict|tuple|set|[a-z]+(-[a-z]+)+)$|\[")


def _is_type_tag(part: str) -> bool:
    return bool(_TYPE_TAG.search(part))


def param_of_location(loc: Sequence[Any], body: Any = _NO_BODY) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``.

    pydantic puts the names of union members into locations: type tags such as ``str`` or
    ``list[str]``, and the tag of a discriminated union (``user`` for a user message). Walking
    the location along the request ``body`` tells such names from real fields: a field is a
    key of the object at that point (or, last in the location, a missing one).
    """
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    kept: list[Any] = []
    value = body
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, int):
            kept.append(part)
            value = value[part] if isinstance(value, list) and -len(value) <= part < len(value) else _NO_BODY
            continue
        if value is _NO_BODY:
            # Without the body, fall back to recognising pydantic's type tags by their look.
            if not _is_type_tag(part):
                kept.append(part)
            continue
        if isinstance(value, dict) and part in value:
            kept.append(part)
            value = value[part]
        elif isinstance(value, dict) and last and not _is_type_tag(part):
            kept.append(part)  # a missing field
        # otherwise: a union member's name; the value stays where it is
    text = ""
    for part in kept:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or None


def _most_relevant(errors: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The error to report: the first, unless it only says which union member did not fit.

    For ``"stop": [17 strings]`` pydantic reports "not a string" (the ``str`` member) before
    "too long" (the list member); the latter is the one that helps.
    """
    first = errors[0]
    if not str(first.get("type", "")).endswith("_type"):
        return first
    prefix = tuple(first.get("loc", ()))[:-1]
    for error in errors[1:]:
        loc = tuple(error.get("loc", ()))
        if loc[: len(prefix)] == prefix and not str(error.get("type", "")).endswith("_type"):
            return error
    return first


def validation_error_to_invalid_request(exc: RequestValidationError) -> InvalidRequest:
    """The most relevant validation failure as a 400 with ``param`` set."""
    errors = list(exc.errors())
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = _most_relevant(errors)
    kind = first.get("type", "")
    param = param_of_location(first.get("loc", ()), getattr(exc, "body", _NO_BODY))
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request. "
            f"({first.get('ctx', {}).get('error', 'invalid JSON')})"
        )
    if kind == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param)
    if kind == "missing" and param is None:
        return InvalidRequest("A JSON request body is required.")
    message = first.get("msg", "Invalid value")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    if param is None:
        return InvalidRequest(f"Invalid request body: {message}")
    return InvalidRequest(f"Invalid value for '{param}': {message}", param=param)
