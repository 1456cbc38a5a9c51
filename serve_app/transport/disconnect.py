"""Cancel work whose client went away before the first byte of the reply.

Once a streamed reply has started, Starlette notices a disconnect and cancels the body
iterator. Before that (a non-streamed reply being folded, or a stream waiting for its first
batch behind a queue) nothing listens, so a client that gives up would leave its generation
running to the end. :func:`unless_disconnected` listens for ``http.disconnect`` meanwhile and
cancels the work, which closes the backend stream and aborts the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from serve_app.core.errors import ClientDisconnected

T = TypeVar("T")


async def wait_for_disconnect(request: Request) -> None:
    """Return once the client has disconnected (the body must already be read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, awaitable: Awaitable[T]) -> T:
    """The result of ``awaitable``; cancelled, and :class:`ClientDisconnected` raised, if the
    client disconnects first."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, watcher):
            if not task.done():
                task.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)
    if work.cancelled() and watcher.done() and not watcher.cancelled():
        raise ClientDisconnected("The client closed the connection before the reply.")
    return work.result()
