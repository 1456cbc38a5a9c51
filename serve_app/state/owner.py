"""Who owns what a request stores: the name of its API key."""

from __future__ import annotations

from starlette.requests import Request

from serve_app.edge.middleware import context_of


def owner_of(request: Request) -> str:
    """The request's API key name; ``""`` on a server without keys (one tenant)."""
    ctx = context_of(request.scope)
    return (ctx.key_name if ctx is not None else None) or ""
