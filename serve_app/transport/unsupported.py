"""Reporting accepted-but-unhonoured request fields: a response header and a log line."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

UNSUPPORTED_HEADER = "x-unsupported-params"
# A header is no place for a client's whole body: proxies refuse responses whose headers pass
# a few KB, so the list is cut (the log line keeps every name).
MAX_NAMES_IN_HEADER = 16
MAX_NAME_CHARS = 64


def header_safe(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text`` as printable ASCII for a header value (names come from clients' JSON keys,
    which may hold any character, line breaks included), cut to ``limit`` characters."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in escaped)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def unsupported_headers(names: list[str], request_id: str | None) -> dict[str, str]:
    """Headers naming fields we accepted but could not honour (and log them once)."""
    if not names:
        return {}
    shown = [header_safe(name) for name in names[:MAX_NAMES_IN_HEADER]]
    logger.warning("request %s: not honoured: %s", request_id, ", ".join(header_safe(n, 200) for n in names))
    if len(names) > MAX_NAMES_IN_HEADER:
        shown.append(f"... and {len(names) - MAX_NAMES_IN_HEADER} more")
    return {UNSUPPORTED_HEADER: ", ".join(shown)}
