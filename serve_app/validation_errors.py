"""FastAPI's request-validation errors as our 400s, naming the offending field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError

from serve_app.errors import InvalidRequest


def param_of_location(loc: Sequence[Any]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``"messages[0].content"``."""
    parts = [p for p in loc if p not in ("body",)]
    # pydantic adds the union member's tag/type name to the location; drop those.
    parts = [p for p in parts if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or None


def validation_error_to_invalid_request(exc: RequestValidationError) -> InvalidRequest:
    """The first validation failure as a 400 with ``param`` set."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("Invalid request body.")
    first = errors[0]
    kind = first.get("type", "")
    param = param_of_location(first.get("loc", ()))
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
