"""Text no tokenizer or database can take, found in a request body before any route reads it.

A JSON string may escape a lone UTF-16 surrogate (``"\\ud800"``). Python's JSON parser accepts it,
but the resulting ``str`` cannot be encoded as UTF-8: the tokenizer raises, PostgreSQL refuses
it, and the reply cannot echo it. Every route of every API takes JSON text, so the edge looks
once, for all of them, and names the field. A surrogate can only arrive escaped (UTF-8 cannot
encode one), so a body without such an escape is passed by one byte search and never parsed here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from serve_app.core.errors import InvalidRequest

# A \u escape of a code unit in D800-DFFF; a surrogate pair is fine, so matches are checked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def unencodable_text_path(value: Any, path: str = "") -> str | None:
    """Where in a parsed JSON value the first string that UTF-8 cannot encode is.

    The path is written like OpenAI's ``param`` (``messages[0].content``); a bad object key is
    reported as its object's path. ``None`` when every string (keys included) is valid text.
    """
    if isinstance(value, str):
        return None if _is_encodable(value) else (path or "body")
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = unencodable_text_path(item, _join(path, i))
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _is_encodable(key):
                return path or "body"
            found = unencodable_text_path(item, _join(path, key))
            if found is not None:
                return found
    return None


def unencodable_text_error(body: bytes) -> InvalidRequest | None:
    """A 400 naming the field of ``body`` that holds a lone surrogate, or ``None``.

    Bodies that are not JSON are left to their route (its own error, or a binary blob upload).
    """
    if _SURROGATE_ESCAPE.search(body) is None:
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    path = unencodable_text_path(parsed)
    if path is None:
        return None
    return InvalidRequest(
        f"Invalid value for '{path}': the text contains a lone UTF-16 surrogate (an unpaired "
        "\\ud800-\\udfff escape), which is not valid Unicode text.",
        param=path,
        code="invalid_text",
    )
