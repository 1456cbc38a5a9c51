"""A reverse proxy that logs each request's method, path and JSON body, and streams replies through.

Used by ``scripts/openwebui_check.py --record`` to capture what a front end really sends (the
fixtures of ``tests/e2e/fixtures/openwebui/`` were made this way). Runs aiohttp in a thread;
aiohttp comes with Open WebUI's environment.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def recording_proxy(target: str, log_file: Path) -> Iterator[str]:
    """Serve a proxy to ``target`` on loopback; yields its URL; appends one JSON line per request."""
    from aiohttp import ClientSession, ClientTimeout, web

    log_file.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    ready = threading.Event()
    stop: dict[str, asyncio.AbstractEventLoop] = {}

    async def forward(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with log_file.open("a") as out:
            out.write(json.dumps({"time": time.time(), "method": request.method, "path": request.path_qs, "body": body}) + "\n")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        session: ClientSession = request.app["session"]
        async with session.request(request.method, target + request.path_qs, data=raw, headers=headers) as upstream:
            reply = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}
            })
            await reply.prepare(request)
            async for block in upstream.content.iter_any():
                await reply.write(block)
            await reply.write_eof()
            return reply

    async def serve() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app["session"] = ClientSession(timeout=ClientTimeout(total=None), auto_decompress=False)
        app.router.add_route("*", "/{tail:.*}", forward)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop["loop"] = asyncio.get_running_loop()
        done = asyncio.Event()
        stop["done"] = done  # type: ignore[assignment]
        ready.set()
        await done.wait()
        await app["session"].close()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop = stop["loop"]
        loop.call_soon_threadsafe(stop["done"].set)  # type: ignore[attr-defined]
        thread.join(timeout=10)
