"""The state store under Ray Serve: two ingress replicas share PostgreSQL, and what is stored
outlives the application (on PostgreSQL and on the default SQLite file alike).

One cluster and one PostgreSQL server for the module; each test deploys the graph it needs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from ray import serve

from serve_app.state.sql_store import SqlStateStore
from serve_app.state.store import StoredResponse
from tests.integration.harness import APP_NAME, deploy, local_ray, shared_database

pytestmark = pytest.mark.ray

MODEL = "chat:1"


def app_args(state: dict[str, Any], ingress_replicas: int) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": MODEL,
                "engine": "fake",
                "engine_args": {"output_tokens": 3},
                "context_length": 100000,
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
            }
        ],
        "ingress": {
            "settings": {"state": state},
            "deployment": {"num_replicas": ingress_replicas, "ray_actor_options": {"num_cpus": 0.1}},
        },
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, Any], str]]:
    """(base URL, the PostgreSQL state settings, the database URL the test process reads)."""
    with shared_database() as state, local_ray(num_cpus=8) as port:
        yield f"http://127.0.0.1:{port}", state, os.environ[state["database_url_env"]]


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=2)


def stored(database_url: str, ids: list[str]) -> list[StoredResponse]:
    """The rows of ``ids`` as the database holds them (read beside the app, not through it)."""

    async def read() -> list[StoredResponse]:
        store = SqlStateStore(database_url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            rows = [await store.get_response("", rid) for rid in ids]
        finally:
            await store.close()
        return [row for row in rows if row is not None]

    return asyncio.run(read())


def restart(args: dict[str, Any]) -> None:
    """Delete the application (its replicas go) and deploy it again."""
    serve.delete(APP_NAME)
    deploy(args)


def test_two_ingress_replicas_chain_through_each_other_and_survive_a_restart(
    cluster: tuple[str, dict[str, Any], str],
) -> None:
    base, state, database_url = cluster
    args = app_args(state, ingress_replicas=2)
    deploy(args)
    api = client(base)
    ids: list[str] = []
    inputs: list[int] = []
    previous = None
    for turn in range(12):
        response = api.responses.create(model=MODEL, input=f"turn {turn}", previous_response_id=previous)
        assert response.usage is not None
        ids.append(response.id)
        inputs.append(response.usage.input_tokens)
        previous = response.id
    # Every turn saw all the earlier ones, whichever replica stored them.
    assert all(later > earlier for earlier, later in zip(inputs, inputs[1:], strict=False))
    rows = stored(database_url, ids)
    workers = [row.worker for row in rows]
    assert len(rows) == 12 and len(set(workers)) == 2, workers
    assert any(a != b for a, b in zip(workers, workers[1:], strict=False))  # a hand-over happened

    restart(args)
    api = client(base)
    assert api.responses.retrieve(ids[-1]).output_text == "tok0 tok1 tok2 "
    after = api.responses.create(model=MODEL, input="after the restart", previous_response_id=ids[-1])
    assert after.usage is not None and after.usage.input_tokens > inputs[-1]
    conversation = api.conversations.create(items=[{"role": "user", "content": "kept"}])
    restart(args)
    items = client(base).conversations.items.list(conversation.id).data
    assert [i.content[0].text for i in items] == ["kept"]  # type: ignore[union-attr]
    serve.delete(APP_NAME)


def test_the_default_sqlite_file_survives_a_restart(cluster: tuple[str, dict[str, Any], str], tmp_path: Path) -> None:
    base, _, _ = cluster
    args = app_args({"data_dir": str(tmp_path)}, ingress_replicas=1)
    deploy(args)
    response = client(base).responses.create(model=MODEL, input="remember me")
    restart(args)
    assert client(base).responses.retrieve(response.id).output_text == response.output_text
    assert (tmp_path / "state.sqlite3").is_file()
    serve.delete(APP_NAME)
