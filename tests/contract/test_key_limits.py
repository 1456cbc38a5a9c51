"""Named API keys with limits: requests and tokens per minute, concurrency, allowed models."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from deployments.engines.fake import FakeEngineConfig
from serve_app.edge.keys import KeysFileError
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, VISION_MODEL, build_fake_app
from tests.servers import serve_in_thread

KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-fedcba9876543210"
CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def keyed_settings(*entries: dict[str, Any], **settings: Any) -> IngressSettings:
    return IngressSettings(keys=list(entries), **settings)


def test_requests_per_minute_refuses_one_key_and_serves_another() -> None:
    settings = keyed_settings(
        {"name": "team-a", "key": KEY_A, "requests_per_minute": 60, "burst": 2},
        {"name": "team-b", "key": KEY_B},
    )
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        assert [client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A)).status_code for _ in range(2)] == [200, 200]
        refused = client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        # One request refills in a second at 60/min: the wait is honest and short.
        assert 0 < int(refused.headers["retry-after-ms"]) <= 1000
        assert refused.headers["retry-after"] == "1"
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_B)).status_code == 200
        # Ollama routes answer in Ollama's shape.
        ollama_refused = client.post("/api/chat", json={**CHAT, "stream": False}, headers=bearer(KEY_A))
        assert ollama_refused.status_code == 429
        assert set(ollama_refused.json()) == {"error"}
        assert "retry-after" in ollama_refused.headers


def test_openai_client_retry_honours_retry_after() -> None:
    # 30/min refills one request every 2 s (ample for the key-B call in between on a slow
    # machine); a burst of 1 makes the second call wait.
    settings = keyed_settings(
        {"name": "team-a", "key": KEY_A, "requests_per_minute": 30, "burst": 1},
        {"name": "team-b", "key": KEY_B},
    )
    app, _ = build_fake_app(settings)
    seen: list[tuple[int, float, str | None]] = []

    def record(response: Any) -> None:
        seen.append((response.status_code, time.monotonic(), response.headers.get("retry-after-ms")))

    with serve_in_thread(app) as url:
        http_client = openai.DefaultHttpxClient(event_hooks={"response": [record]})
        with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY_A, max_retries=2, http_client=http_client) as client:
            client.chat.completions.create(**CHAT)
            other = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=bearer(KEY_B))
            assert other.status_code == 200  # key B is not held back by key A's limit
            started = time.monotonic()
            reply = client.chat.completions.create(**CHAT)
            took = time.monotonic() - started
    assert reply.choices[0].message.content
    statuses = [s for s, _, _ in seen]
    assert statuses[0] == 200 and 429 in statuses and statuses[-1] == 200
    refusal = next(i for i, (s, _, _) in enumerate(seen) if s == 429)
    retry_after_s = int(seen[refusal][2] or 0) / 1000
    assert 0 < retry_after_s <= 2
    assert took >= retry_after_s
    assert seen[refusal + 1][1] - seen[refusal][1] >= retry_after_s * 0.95


async def test_concurrency_limit_and_release_after_streams() -> None:
    settings = keyed_settings({"name": "team-a", "key": KEY_A, "max_concurrent": 2})
    app, _ = build_fake_app(settings, FakeEngineConfig(token_interval_s=0.05, output_tokens=6))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=bearer(KEY_A)) as client:

        async def slow_chat() -> int:
            reply = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6})
            return reply.status_code

        slow = [asyncio.create_task(slow_chat()) for _ in range(2)]
        await asyncio.sleep(0.1)
        third = await client.post("/v1/chat/completions", json=CHAT)
        assert third.status_code == 429
        assert third.json()["error"]["code"] == "rate_limit_exceeded"
        assert "max_concurrent" in third.json()["error"]["message"]
        assert await asyncio.gather(*slow) == [200, 200]
        # Slots come back when replies end, streamed ones included.
        async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as streamed:
            assert streamed.status_code == 200
            async for _ in streamed.aiter_bytes():
                pass
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


def test_concurrency_slot_released_on_disconnect() -> None:
    settings = keyed_settings({"name": "team-a", "key": KEY_A, "max_concurrent": 1})
    app, engines = build_fake_app(settings, FakeEngineConfig(token_interval_s=0.1, output_tokens=50))
    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, headers=bearer(KEY_A), timeout=10) as client:
            with client.stream("POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 50, "stream": True}) as r:
                assert r.status_code == 200
                next(r.iter_lines())
            # The stream was dropped mid-way; its slot must come back.
            deadline = time.monotonic() + 5
            while True:
                status = client.post("/v1/chat/completions", json=CHAT).status_code
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert status == 200
    assert engines[CHAT_MODEL].aborted


def test_tokens_per_minute_are_charged_after_the_request() -> None:
    # The fake engine counts "hi" + a role as 2 prompt tokens; 8 completion tokens.
    settings = keyed_settings({"name": "team-a", "key": KEY_A, "tokens_per_minute": 6})
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        first = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 8}, headers=bearer(KEY_A))
        assert first.status_code == 200  # admitted with tokens left, charged 10 afterwards
        assert first.json()["usage"]["total_tokens"] == 10
        refused = client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        assert refused.status_code == 429
        assert "tokens_per_minute" in refused.json()["error"]["message"]
        # 6 tokens/min refill 0.1/s; the bucket is 4 below zero, so about 50 s to one token.
        assert 40_000 <= int(refused.headers["retry-after-ms"]) <= 60_000


def test_allowed_models_hide_the_others() -> None:
    settings = keyed_settings(
        {"name": "team-a", "key": KEY_A, "models": ["gpt-4o-mini", EMBED_MODEL]},  # aliases resolve
        {"name": "team-b", "key": KEY_B},
    )
    app, _ = build_fake_app(settings)
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A)).status_code == 200
        denied = client.post("/v1/chat/completions", json={**CHAT, "model": VISION_MODEL}, headers=bearer(KEY_A))
        unknown = client.post("/v1/chat/completions", json={**CHAT, "model": "no-such:1"}, headers=bearer(KEY_A))
        assert denied.status_code == unknown.status_code == 404
        assert denied.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"
        ollama_denied = client.post("/api/chat", json={**CHAT, "model": VISION_MODEL, "stream": False}, headers=bearer(KEY_A))
        assert ollama_denied.status_code == 404 and set(ollama_denied.json()) == {"error"}
        assert client.post("/api/show", json={"model": VISION_MODEL}, headers=bearer(KEY_A)).status_code == 404
        listed = {m["id"] for m in client.get("/v1/models", headers=bearer(KEY_A)).json()["data"]}
        assert listed == {CHAT_MODEL, EMBED_MODEL}
        tags = {m["name"] for m in client.get("/api/tags", headers=bearer(KEY_A)).json()["models"]}
        assert tags == {CHAT_MODEL, EMBED_MODEL}
        assert client.post("/v1/chat/completions", json={**CHAT, "model": VISION_MODEL}, headers=bearer(KEY_B)).status_code == 200


def test_unknown_model_in_a_key_fails_at_build() -> None:
    with pytest.raises(KeysFileError, match="team-a"):
        build_fake_app(keyed_settings({"name": "team-a", "key": KEY_A, "models": ["nope:1"]}))


def test_keys_file_old_format_names_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.txt"
    path.write_text("# team keys\nsk-file-one\n\nsk-file-two  # comment\n")
    settings = IngressSettings(api_keys=["sk-inline"], api_keys_file=path)
    assert [k.name for k in settings.load_keyring()] == ["key-1", "key-2", "key-3"]
    app, _ = build_fake_app(settings)
    with caplog.at_level(logging.INFO, logger="serve_app.usage"), TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-file-two")).status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "serve_app.usage"]
    assert lines[-1]["key"] == "key-3"


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_keys_file_structured_format(tmp_path: Path, suffix: str) -> None:
    entries = [
        {"name": "team-a", "key": KEY_A, "requests_per_minute": 60, "burst": 1, "models": [CHAT_MODEL]},
        {"name": "team-b", "key": KEY_B, "tokens_per_minute": 100000, "max_concurrent": 4},
    ]
    path = tmp_path / f"keys.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps({"keys": entries}))
    else:
        lines = ["keys:"]
        for e in entries:
            lines.append(f"  - name: {e['name']}")
            lines += [f"    {k}: {json.dumps(v)}" for k, v in e.items() if k != "name"]
        path.write_text("\n".join(lines) + "\n")
    keyring = IngressSettings(api_keys_file=path).load_keyring()
    assert [(k.name, k.limits.requests_per_minute, k.limits.max_concurrent) for k in keyring] == [
        ("team-a", 60, None), ("team-b", None, 4),
    ]
    app, _ = build_fake_app(IngressSettings(api_keys_file=path))
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A)).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A)).status_code == 429
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_B)).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-nobody")).status_code == 401


def test_bad_keys_file_names_the_entry_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - name: team-a\n    key: {KEY_A}\n    requests_per_minut: 5\n"
                    f"  - name: team-a\n    key: {KEY_B}\n")
    with pytest.raises(KeysFileError) as raised:
        IngressSettings(api_keys_file=path).load_keyring()
    assert "keys[0].requests_per_minut" in str(raised.value)
    assert KEY_A not in str(raised.value) and KEY_B not in str(raised.value)
    path.write_text(f"keys:\n  - {{name: team-a, key: {KEY_A}}}\n  - {{name: team-a, key: {KEY_B}}}\n")
    with pytest.raises(KeysFileError, match="repeated: team-a") as raised:
        IngressSettings(api_keys_file=path).load_keyring()
    assert KEY_A not in str(raised.value)


def test_keys_from_env_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_KEYS", json.dumps([{"name": "env-key", "key": KEY_A, "max_concurrent": 1}]))
    keyring = IngressSettings().load_keyring()
    assert [(k.name, k.limits.max_concurrent) for k in keyring] == [("env-key", 1)]
    assert KEY_A not in repr(IngressSettings()) and KEY_A not in repr(keyring)


def test_no_key_material_in_logs_or_metrics(caplog: pytest.LogCaptureFixture) -> None:
    settings = keyed_settings(
        {"name": "team-a", "key": KEY_A, "requests_per_minute": 60, "burst": 1},
        {"name": "team-b", "key": KEY_B},
    )
    app, _ = build_fake_app(settings)
    with caplog.at_level(logging.DEBUG), TestClient(app) as client:
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))
        client.post("/v1/chat/completions", json=CHAT, headers=bearer(KEY_A))  # 429
        client.post("/api/chat", json={**CHAT, "stream": False}, headers=bearer(KEY_B))
        client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-wrong-key-999"))
        metrics = client.get("/metrics", headers=bearer(KEY_B)).text
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (KEY_A, KEY_B, "sk-wrong-key-999"):
        assert secret not in logged
        assert secret not in metrics
    assert 'key="team-a"' in metrics and 'limit="requests_per_minute"' in metrics
    assert "team-b" in logged


def test_settings_errors_never_show_keys() -> None:
    with pytest.raises(ValidationError) as raised:
        IngressSettings(keys=[{"key": KEY_A}])  # no name
    assert "keys.0.name" in str(raised.value)
    assert KEY_A not in str(raised.value)
