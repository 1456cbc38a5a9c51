"""One structured usage line per request on ``serve_app.usage``; no prompts, no keys."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.engines.fake import FakeEngineConfig
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, build_fake_app
from tests.servers import serve_in_thread

KEY = "sk-usage-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
PROMPT = "a very secret prompt about zebras"
FIELDS = {
    "event", "request_id", "key", "model", "api", "method", "route", "status", "outcome", "error_code",
    "limit", "prompt_tokens", "completion_tokens", "queue_ms", "ttft_ms", "duration_ms",
}


def usage_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve_app.usage"]


def settings(**extra: Any) -> IngressSettings:
    return IngressSettings(keys=[{"name": "team-a", "key": KEY, **extra}])


def test_usage_line_of_a_streamed_chat(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = build_fake_app(settings(), FakeEngineConfig(token_interval_s=0.01, output_tokens=4))
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    with caplog.at_level(logging.INFO, logger="serve_app.usage"), TestClient(app) as client:
        with client.stream("POST", "/v1/chat/completions", json=body, headers={**AUTH, "x-request-id": "req-42"}) as r:
            assert r.status_code == 200
            r.read()
        client.get("/health")  # probes and scrapes write no usage line
        client.get("/metrics", headers=AUTH)
    [line] = usage_lines(caplog)
    assert set(line) == FIELDS
    assert line["event"] == "usage" and line["request_id"] == "req-42"
    assert (line["key"], line["model"], line["api"], line["route"]) == ("team-a", CHAT_MODEL, "openai", "/v1/chat/completions")
    assert (line["status"], line["outcome"], line["error_code"]) == (200, "ok", None)
    assert line["prompt_tokens"] == 1 + len(PROMPT.split()) and line["completion_tokens"] == 4
    assert 0 < line["ttft_ms"] <= line["duration_ms"]
    assert line["queue_ms"] == 0.0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "zebras" not in logged and KEY not in logged


def test_usage_lines_of_refusals(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = build_fake_app(settings(requests_per_minute=60, burst=1))
    chat = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": False}
    with caplog.at_level(logging.INFO, logger="serve_app.usage"), TestClient(app) as client:
        assert client.post("/api/chat", json=chat, headers=AUTH).status_code == 200
        assert client.post("/api/chat", json=chat, headers=AUTH).status_code == 429
        assert client.post("/api/chat", json=chat).status_code == 401
    ok, limited, unauthorized = usage_lines(caplog)
    assert (ok["api"], ok["route"], ok["outcome"], ok["key"]) == ("ollama", "/api/chat", "ok", "team-a")
    assert ok["completion_tokens"] > 0 and ok["ttft_ms"] is not None
    assert (limited["status"], limited["outcome"], limited["limit"]) == (429, "rate_limited", "requests_per_minute")
    assert limited["error_code"] == "rate_limit_exceeded" and limited["route"] == "/api/chat"
    assert limited["prompt_tokens"] == 0 and limited["model"] is None  # refused before the body was read
    assert (unauthorized["status"], unauthorized["outcome"], unauthorized["key"]) == (401, "error", None)
    assert unauthorized["error_code"] == "invalid_api_key"


def test_usage_line_of_a_disconnect(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = build_fake_app(settings(), FakeEngineConfig(token_interval_s=0.05, output_tokens=40))
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 40}
    with caplog.at_level(logging.INFO, logger="serve_app.usage"), serve_in_thread(app) as url:
        with httpx.Client(base_url=url, headers=AUTH) as client:
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                next(r.iter_lines())
        deadline = time.monotonic() + 5
        while not usage_lines(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
    [line] = usage_lines(caplog)
    assert (line["status"], line["outcome"]) == (200, "disconnected")
    # Usage arrives with the last chunk, which never came: the chunks sent are counted instead.
    assert 1 <= line["completion_tokens"] < 40  # cut short by the disconnect, however slow the machine
