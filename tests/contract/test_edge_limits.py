"""The edge's own limits on what a client sends: header count and size (431), and the time a
body may take to arrive (408), in each API's error shape; other requests carry on meanwhile."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, build_fake_app
from tests.servers import serve_in_thread

BODY_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app, _ = build_fake_app(IngressSettings(body_timeout_s=BODY_TIMEOUT_S))
    with serve_in_thread(app) as served:
        yield served


def raw_request(url: str, head: bytes, body_parts: list[bytes] = (), pause_s: float = 0.0, timeout: float = 20) -> tuple[int, bytes, float]:
    """Send a request byte for byte, stopping once the server answers; its status, body and the
    seconds until the answer."""
    parts = urlsplit(url)
    started = time.monotonic()
    reply = b""
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.settimeout(pause_s)
            try:
                chunk = sock.recv(65536)  # an answer before the body is done?
            except TimeoutError:
                chunk = b""
            if chunk:
                reply = chunk
                break
            sock.sendall(part)
        sock.settimeout(timeout)
        while b"\r\n\r\n" not in reply or len(reply) < reply.index(b"\r\n\r\n") + 4 + _length(reply):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1], time.monotonic() - started


def _length(reply: bytes) -> int:
    head = reply.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


@pytest.mark.parametrize(("path", "shape"), [("/v1/models", "openai"), ("/api/tags", "ollama"), ("/v1/messages", "anthropic")])
def test_a_thousand_headers_are_431(url: str, path: str, shape: str) -> None:
    headers = {f"x-h{i}": "1" for i in range(1000)}
    reply = httpx.get(f"{url}{path}", headers=headers, timeout=10)
    assert reply.status_code == 431
    body = reply.json()
    if shape == "ollama":
        assert "1002 headers" in body["error"] or "headers" in body["error"]
    elif shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    else:
        assert body["error"]["code"] == "request_header_fields_too_large"


def test_a_100_kb_header_is_431(url: str) -> None:
    reply = httpx.get(f"{url}/v1/models", headers={"x-big": "a" * 100_000}, timeout=10)
    assert reply.status_code == 431 and "bytes" in reply.json()["error"]["message"]
    # An ordinary request right after is served.
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200


def test_a_body_sent_at_one_byte_a_second_is_408_and_others_carry_on(url: str) -> None:
    body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    outcome: dict[str, tuple[int, bytes, float]] = {}
    slow = threading.Thread(target=lambda: outcome.update(slow=raw_request(url, head, [body[i:i + 1] for i in range(20)], 1.0)))
    slow.start()
    time.sleep(0.3)
    for _ in range(5):
        reply = httpx.post(f"{url}/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
        assert reply.status_code == 200
    # All five were answered while the slow upload was still under way.
    assert slow.is_alive() and "slow" not in outcome
    slow.join(30)
    status, reply_body, took = outcome["slow"]
    assert status == 408 and json.loads(reply_body)["error"]["code"] == "request_timeout"
    # Refused at the body timeout, after about 3 of its 20 bytes, not once the client was done.
    assert BODY_TIMEOUT_S <= took < 15, took
