"""The state store under Ray Serve: two ingress replicas share PostgreSQL, and what is stored
outlives the application (on PostgreSQL and on the default SQLite file alike).

One cluster and one PostgreSQL server for the module; each test deploys the graph it needs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from ray import serve

from serve_app.state.assistants.sql_store import SqlAssistantsStore
from serve_app.state.assistants.store import StoredRun
from serve_app.state.sql_store import SqlStateStore
from serve_app.state.store import StoredResponse
from tests.integration.harness import APP_NAME, deploy, local_ray, shared_database, wait_for

pytestmark = pytest.mark.ray

MODEL = "chat:1"


SLOW = "slow:1"  # a run long enough to kill its replica in the middle of it


def app_args(state: dict[str, Any], ingress_replicas: int) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": name,
                "engine": "fake",
                "engine_args": engine_args,
                "context_length": 100000,
                "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
            }
            for name, engine_args in ((MODEL, {"output_tokens": 3}),
                                      (SLOW, {"output_tokens": 400, "token_interval_s": 0.1}))
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
    workers: list[str | None] = []
    # Turns until both replicas have stored some (the proxy may favour one for a while): a
    # hand-over between them is then certain, not left to the router's luck.
    for turn in range(200):
        response = api.responses.create(model=MODEL, input=f"turn {turn}", previous_response_id=previous)
        assert response.usage is not None
        # Every turn saw all the earlier ones, whichever replica stored them.
        assert not inputs or response.usage.input_tokens > inputs[-1]
        ids.append(response.id)
        inputs.append(response.usage.input_tokens)
        previous = response.id
        if turn >= 11 and turn % 4 == 3:
            workers = [row.worker for row in stored(database_url, ids)]
            if len(set(workers)) == 2:
                break
    assert len(workers) == len(ids) and len(set(workers)) == 2, workers
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


def stored_runs(database_url: str, thread_run_ids: list[tuple[str, str]]) -> list[StoredRun]:
    """The run rows as the database holds them."""

    async def read() -> list[StoredRun]:
        base = SqlStateStore(database_url.replace("postgresql://", "postgresql+asyncpg://"))
        store = SqlAssistantsStore(base)
        try:
            rows = [await store.get_run("", thread_id, run_id) for thread_id, run_id in thread_run_ids]
        finally:
            await base.close()
        return [row for row in rows if row is not None]

    return asyncio.run(read())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_assistant_runs_are_polled_through_either_replica_and_a_killed_one_fails_its_run(
    cluster: tuple[str, dict[str, Any], str],
) -> None:
    base, state, database_url = cluster
    # Replicas heartbeat their runs every half second; a run not heard of for 3 s is closed.
    args = app_args({**state, "heartbeat_s": 0.5, "stale_after_s": 3}, ingress_replicas=2)
    deploy(args)
    api = client(base)
    assistant = api.beta.assistants.create(model=MODEL, instructions="Be brief.")
    runs: list[Any] = []
    workers: set[str | None] = set()
    # Runs until both replicas have carried out some (bounded; the proxy may favour one for a while).
    while len(workers) < 2 and len(runs) < 200:
        batch = [
            api.beta.threads.create_and_run(assistant_id=assistant.id,
                                            thread={"messages": [{"role": "user", "content": f"q{len(runs) + i}"}]})
            for i in range(4)
        ]
        # Each polled to completion through whichever replica the proxy picks.
        finished = [api.beta.threads.runs.poll(r.id, thread_id=r.thread_id, poll_interval_ms=50) for r in batch]
        assert [r.status for r in finished] == ["completed"] * 4
        runs += batch
        workers = {row.worker for row in stored_runs(database_url, [(r.thread_id, r.id) for r in runs])}
    assert len(workers) == 2, workers
    answers = api.beta.threads.messages.list(runs[0].thread_id).data
    assert answers[0].content[0].text.value == "tok0 tok1 tok2 "  # type: ignore[union-attr]

    slow = api.beta.assistants.create(model=SLOW)
    doomed = api.beta.threads.create_and_run(assistant_id=slow.id, thread={"messages": [{"role": "user", "content": "long"}]})
    wait_for(lambda: api.beta.threads.runs.retrieve(doomed.id, thread_id=doomed.thread_id).status == "in_progress",
             timeout_s=30, what="the slow run to start")
    [row] = stored_runs(database_url, [(doomed.thread_id, doomed.id)])
    assert row.worker is not None
    os.kill(int(row.worker.split(":")[1]), signal.SIGKILL)  # the ingress replica running it
    started = time.monotonic()
    def closed() -> bool:
        try:
            return api.beta.threads.runs.retrieve(doomed.id, thread_id=doomed.thread_id).status == "failed"
        except (openai.APIConnectionError, openai.APIStatusError):
            return False  # the killed replica's connections, while Serve notices

    wait_for(closed, timeout_s=60, what="the orphaned run to be closed")
    closed = api.beta.threads.runs.retrieve(doomed.id, thread_id=doomed.thread_id)
    assert closed.last_error is not None and "stopped" in closed.last_error.message
    assert time.monotonic() - started < 60
    # The surviving (and the replaced) replica keep serving runs.
    again = api.beta.threads.create_and_run_poll(assistant_id=assistant.id, poll_interval_ms=50,
                                                 thread={"messages": [{"role": "user", "content": "after"}]})
    assert again.status == "completed"
    serve.delete(APP_NAME)
