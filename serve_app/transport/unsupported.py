"""Reporting accepted-but-unhonoured request fields: a response header and a log line."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

UNSUPPORTED_HEADER = "x-unsupported-params"


def unsupported_headers(names: list[str], request_id: str | None) -> dict[str, str]:
    """Headers naming fields we accepted but could not honour (and log them once)."""
    if not names:
        return {}
    logger.warning("request %s: not honoured: %s", request_id, ", ".join(names))
    return {UNSUPPORTED_HEADER: ", ".join(names)}
