"""Cross-field rules of request bodies, written as JSON Schema for the OpenAPI document.

The routes enforce these rules in pydantic validators; stating them in the document as well
keeps it truthful: a generated client, or schemathesis, knows that ``top_logprobs`` needs
``logprobs: true`` instead of learning it from a 400.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def when_then(field: str, condition: Schema, then_field: str, then_schema: Schema) -> Schema:
    """If ``field`` is present and matches ``condition``, ``then_field`` must be present and
    match ``then_schema``."""
    return {
        "if": {"required": [field], "properties": {field: condition}},
        "then": {"required": [then_field], "properties": {then_field: then_schema}},
    }


def when_then_not(field: str, condition: Schema, other: str, forbidden: Schema) -> Schema:
    """If ``field`` is present and matches ``condition``, ``other`` must not match ``forbidden``
    (it may be absent)."""
    return {
        "if": {"required": [field], "properties": {field: condition}},
        "then": {"properties": {other: {"not": forbidden}}},
    }


def not_both(first: str, second: str) -> Schema:
    """``first`` and ``second`` are not both given (non-null) in one body."""
    non_null = {"not": {"type": "null"}}
    return {"not": {"required": [first, second], "properties": {first: non_null, second: non_null}}}


def rules(*conditions: Schema) -> dict[str, Any]:
    """The ``json_schema_extra`` of a model bound by ``conditions``."""
    return {"allOf": list(conditions)}


NON_NULL_OBJECT: Schema = {"type": "object"}
TRUE: Schema = {"const": True}
NON_EMPTY_ARRAY: Schema = {"type": "array", "minItems": 1}


# Standard padded base64, as the routes decode it (``base64.b64decode(..., validate=True)``).
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
BASE64_STRING: Schema = {"type": "string", "pattern": BASE64_PATTERN}
# An inline image: the only image URL accepted (remote URLs are refused, never fetched).
IMAGE_DATA_URL: Schema = {"type": "string", "pattern": r"^data:image/[\w.+\-]+;base64," + BASE64_PATTERN[1:]}
