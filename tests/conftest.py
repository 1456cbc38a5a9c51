"""Shared fixtures: the app over the fake engine, in-process and over real HTTP."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.engines.fake import FakeEngine, FakeEngineConfig
from deployments.local_backend import LocalBackend
from serve_app.app import create_app
from serve_app.core.internal_types import ModelCard
from serve_app.settings import IngressSettings
from tests.servers import serve_in_thread

# The state store's default SQLite folder: one throwaway folder per test run, never the user's own
# (inherited by the local Ray clusters the integration tests start).
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="llm-state-")

CHAT_MODEL = "smollm2:135m"
VISION_MODEL = "llava:7b"
EMBED_MODEL = "all-minilm:l6-v2"


def fake_cards() -> list[ModelCard]:
    """Three models: a chat model with tools/thinking, a vision model, an embedding model."""
    return [
        ModelCard(
            name=CHAT_MODEL,
            aliases=["gpt-4o-mini", "smollm2"],
            context_length=64,
            capabilities=["completion", "tools", "thinking", "insert"],
            family="llama",
            parameter_size="135M",
            quantization_level="F32",
        ),
        ModelCard(name=VISION_MODEL, context_length=2048, capabilities=["completion", "vision"], family="llava"),
        ModelCard(
            name=EMBED_MODEL,
            aliases=["text-embedding-3-small"],
            kind="embed",
            context_length=256,
            embedding_dimensions=384,
            supports_dimensions=True,
            capabilities=["embedding"],
            family="bert",
        ),
    ]


def build_fake_app(
    settings: IngressSettings | None = None,
    engine_config: FakeEngineConfig | None = None,
    cards: list[ModelCard] | None = None,
) -> tuple[FastAPI, dict[str, FakeEngine]]:
    """The ingress app over in-process fake engines (``fake_cards`` unless ``cards``), and the
    engines (to inspect counters)."""
    cards = cards or fake_cards()
    engines = {c.name: FakeEngine(c, engine_config) for c in cards}
    app = create_app(LocalBackend(engines), cards, settings or IngressSettings())
    return app, engines


@pytest.fixture
def fake_app() -> tuple[FastAPI, dict[str, FakeEngine]]:
    return build_fake_app()


@pytest.fixture
def client(fake_app: tuple[FastAPI, dict[str, FakeEngine]]) -> Iterator[TestClient]:
    with TestClient(fake_app[0]) as test_client:
        yield test_client


@pytest.fixture
def live_url(fake_app: tuple[FastAPI, dict[str, FakeEngine]]) -> Iterator[str]:
    """The fake app over real HTTP (for the openai and ollama clients)."""
    with serve_in_thread(fake_app[0]) as url:
        yield url


@pytest.fixture(scope="module")
def shared_live_url() -> Iterator[str]:
    """Like ``live_url`` but one server per test module (for tests that only read engine state)."""
    app, _ = build_fake_app()
    with serve_in_thread(app) as url:
        yield url
