"""The Assistants API (v2) through the real ``openai`` client, over the fake engine and SQLite."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AssistantEventHandler, OpenAI

from deployments.engines.fake import FakeEngine, FakeEngineConfig
from serve_app.settings import IngressSettings
from serve_app.state.assistants.sql_store import SqlAssistantsStore
from serve_app.state.assistants.store import Cursor, StoredRun
from serve_app.state.sql_store import SqlStateStore
from tests.conftest import CHAT_MODEL, EMBED_MODEL, build_fake_app
from tests.servers import serve_in_thread

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks Assistants deprecated

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
    },
}
ANSWER = "".join(f"tok{i} " for i in range(8))
V2 = {"OpenAI-Beta": "assistants=v2"}


@pytest.fixture
def served() -> Iterator[tuple[OpenAI, FakeEngine, str]]:
    app, engines = build_fake_app()
    with serve_in_thread(app) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), engines[CHAT_MODEL], url


def turns(engine: FakeEngine) -> list[tuple[str, str]]:
    return [(m.role, m.text()) for m in engine.recent_requests[-1].messages]


def wait_until(check: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- assistants -----------------------------------------------------------------------------------


def test_assistants_create_list_update_delete(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    created = [client.beta.assistants.create(model=CHAT_MODEL, name=f"a{i}", instructions="Be brief.",
                                             tools=[WEATHER], metadata={"n": str(i)}, temperature=0.3)
               for i in range(5)]
    first = created[0]
    assert first.id.startswith("asst_") and first.object == "assistant" and first.model == CHAT_MODEL
    assert first.tools[0].type == "function" and first.tools[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert first.temperature == 0.3 and first.metadata == {"n": "0"}
    newest_first = [a.id for a in client.beta.assistants.list()]
    assert newest_first == [a.id for a in reversed(created)]
    page = client.beta.assistants.list(limit=2, order="asc")
    assert [a.id for a in page.data] == [created[0].id, created[1].id] and page.has_more
    assert [a.id for a in client.beta.assistants.list(order="asc")] == [a.id for a in created]  # auto-paging
    before = client.beta.assistants.list(limit=2, order="asc", before=created[3].id)
    assert [a.id for a in before.data] == [created[1].id, created[2].id]
    updated = client.beta.assistants.update(first.id, name="renamed", tools=[])
    assert (updated.name, updated.tools, updated.instructions) == ("renamed", [], "Be brief.")
    assert client.beta.assistants.retrieve(first.id).name == "renamed"
    gone = client.beta.assistants.delete(first.id)
    assert gone.deleted and gone.id == first.id
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.retrieve(first.id)


@pytest.mark.parametrize(
    ("tools", "named"),
    [([{"type": "file_search"}], "file_search"), ([{"type": "code_interpreter"}], "code_interpreter")],
)
def test_hosted_tools_are_refused_by_name(served: tuple[OpenAI, FakeEngine, str], tools: list[Any], named: str) -> None:
    client, _, _ = served
    with pytest.raises(openai.BadRequestError, match=named) as info:
        client.beta.assistants.create(model=CHAT_MODEL, tools=tools)
    assert info.value.body["param"] == "tools[0].type"  # type: ignore[index]


def test_file_ids_are_refused(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    # Empty resource lists, as some clients send by default, name no file.
    empty = client.beta.assistants.create(model=CHAT_MODEL, tool_resources={"code_interpreter": {"file_ids": []}})
    with pytest.raises(openai.BadRequestError, match="cannot be null"):
        client.beta.assistants.update(empty.id, extra_body={"model": None})
    with pytest.raises(openai.BadRequestError, match="File ids"):
        client.beta.assistants.create(model=CHAT_MODEL, tool_resources={"file_search": {"vector_store_ids": ["vs_1"]}})
    thread = client.beta.threads.create()
    with pytest.raises(openai.BadRequestError, match="File ids"):
        client.beta.threads.messages.create(thread.id, role="user", content="x",
                                            attachments=[{"file_id": "file-1", "tools": [{"type": "file_search"}]}])
    with pytest.raises(openai.BadRequestError, match="File ids"):
        client.beta.threads.messages.create(thread.id, role="user",
                                            content=[{"type": "image_file", "image_file": {"file_id": "file-1"}}])


# -- threads and messages ---------------------------------------------------------------------------


def test_threads_and_message_pagination_in_both_orders(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    thread = client.beta.threads.create(messages=[{"role": "user", "content": f"m{i}"} for i in range(3)],
                                        metadata={"topic": "t"})
    assert thread.id.startswith("thread_") and thread.metadata == {"topic": "t"}
    for i in range(3, 7):
        client.beta.threads.messages.create(thread.id, role="user", content=f"m{i}")
    texts = [m.content[0].text.value for m in client.beta.threads.messages.list(thread.id, order="asc")]  # type: ignore[union-attr]
    assert texts == [f"m{i}" for i in range(7)]
    page = client.beta.threads.messages.list(thread.id, limit=3)
    assert [m.content[0].text.value for m in page.data] == ["m6", "m5", "m4"] and page.has_more  # type: ignore[union-attr]
    after = client.beta.threads.messages.list(thread.id, limit=3, after=page.data[-1].id)
    assert [m.content[0].text.value for m in after.data] == ["m3", "m2", "m1"]  # type: ignore[union-attr]
    message = page.data[0]
    assert client.beta.threads.messages.retrieve(message.id, thread_id=thread.id).id == message.id
    assert client.beta.threads.messages.update(message.id, thread_id=thread.id, metadata={"k": "v"}).metadata == {"k": "v"}
    assert client.beta.threads.messages.delete(message.id, thread_id=thread.id).deleted
    assert len(list(client.beta.threads.messages.list(thread.id))) == 6
    assert client.beta.threads.update(thread.id, metadata={"topic": "u"}).metadata == {"topic": "u"}
    assert client.beta.threads.delete(thread.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.retrieve(thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.messages.list(thread.id)


# -- runs ---------------------------------------------------------------------------------------------


def test_create_and_run_poll_answers_and_records_usage(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL, instructions="Be brief.")
    run = client.beta.threads.create_and_run_poll(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "hello there"}]},
        poll_interval_ms=20,
    )
    assert run.status == "completed" and run.completed_at is not None and run.last_error is None
    assert run.usage is not None and run.usage.completion_tokens == 8
    assert run.usage.total_tokens == run.usage.prompt_tokens + 8
    assert turns(engine) == [("system", "Be brief."), ("user", "hello there")]
    [answer, question] = client.beta.threads.messages.list(run.thread_id)
    assert (answer.role, answer.run_id, answer.assistant_id) == ("assistant", run.id, assistant.id)
    assert answer.content[0].text.value == ANSWER and answer.status == "completed"  # type: ignore[union-attr]
    assert [m.id for m in client.beta.threads.messages.list(run.thread_id, run_id=run.id)] == [answer.id]
    [step] = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id)
    assert step.type == "message_creation" and step.status == "completed"
    assert step.step_details.message_creation.message_id == answer.id  # type: ignore[union-attr]
    assert client.beta.threads.runs.steps.retrieve(step.id, thread_id=run.thread_id, run_id=run.id).id == step.id
    assert [r.id for r in client.beta.threads.runs.list(run.thread_id)] == [run.id]


def test_create_and_poll_on_an_existing_thread_with_run_overrides(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL, instructions="Base.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "first"}])
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, additional_instructions="Also this.",
        additional_messages=[{"role": "user", "content": "second"}], max_completion_tokens=3, temperature=0.4,
        poll_interval_ms=20,
    )
    assert run.status == "incomplete" and run.incomplete_details.reason == "max_completion_tokens"  # type: ignore[union-attr]
    assert turns(engine) == [("system", "Base.\n\nAlso this."), ("user", "first"), ("user", "second")]
    seen = engine.recent_requests[-1].sampling
    assert (seen.max_tokens, seen.temperature) == (3, 0.4)
    answer = client.beta.threads.messages.list(thread.id).data[0]
    assert answer.status == "incomplete" and answer.content[0].text.value == "tok0 tok1 tok2 "  # type: ignore[union-attr]
    # The answer is part of the thread the next run sees.
    client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert turns(engine)[-1] == ("assistant", "tok0 tok1 tok2 ")
    last = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, truncation_strategy={"type": "last_messages", "last_messages": 1},
        poll_interval_ms=20,
    )
    assert last.status == "completed" and turns(engine) == [("system", "Base."), ("assistant", ANSWER)]


class Collector(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""
        self.events: list[str] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_text_delta(self, delta: Any, snapshot: Any) -> None:
        self.text += delta.value


def test_runs_stream_with_an_event_handler(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "stream it"}])
    handler = Collector()
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, event_handler=handler) as stream:
        stream.until_done()
    assert handler.text == ANSWER
    assert stream.current_run is not None and stream.current_run.status == "completed"
    assert handler.events == [
        "thread.run.created", "thread.run.queued", "thread.run.in_progress",
        "thread.run.step.created", "thread.run.step.in_progress", "thread.message.created",
        "thread.message.in_progress", *["thread.message.delta"] * 8, "thread.message.completed",
        "thread.run.step.completed", "thread.run.completed",
    ]
    assert client.beta.threads.messages.list(thread.id).data[0].content[0].text.value == ANSWER  # type: ignore[union-attr]


def test_raw_stream_ends_with_done(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, url = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL)
    body = {"assistant_id": assistant.id, "stream": True, "thread": {"messages": [{"role": "user", "content": "hi"}]}}
    with httpx.stream("POST", f"{url}/v1/threads/runs", json=body, headers=V2) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in reply.read().decode().split("\n\n") if f]
    assert frames[0].startswith("event: thread.created\n")
    assert frames[-1] == "event: done\ndata: [DONE]"


def test_function_tool_through_submit_tool_outputs(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL, tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "call get_weather"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, poll_interval_ms=20)
    assert run.status == "requires_action" and run.required_action is not None
    [call] = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"arg": "tok0"}
    done = client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "sunny"}],
        poll_interval_ms=20,
    )
    assert done.status == "completed" and done.required_action is None
    assert done.usage is not None and done.usage.completion_tokens == 1 + 8  # both generations
    seen = engine.recent_requests[-1].messages
    assert [m.role for m in seen] == ["user", "assistant", "tool"]
    assert seen[1].tool_calls[0].id == call.id and (seen[2].tool_call_id, seen[2].text()) == (call.id, "sunny")  # type: ignore[index]
    steps = list(client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc"))
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert steps[0].step_details.tool_calls[0].function.output == "sunny"  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="do not accept tool outputs"):
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id,
                                                     tool_outputs=[{"tool_call_id": call.id, "output": "again"}])


def test_streamed_tool_call_and_streamed_outputs(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL, tools=[WEATHER])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "what now"}])
    handler = Collector()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:
        stream.until_done()
    run = stream.current_run
    assert run is not None and run.status == "requires_action" and handler.events[-1] == "thread.run.requires_action"
    [call] = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    # The SDK's own snapshot of the step holds the call once (created empty, filled by the delta).
    [snapshot] = stream.current_run_step_snapshot.step_details.tool_calls  # type: ignore[union-attr]
    assert (snapshot.id, snapshot.function.name, snapshot.function.arguments) == (  # type: ignore[union-attr]
        call.id, "get_weather", call.function.arguments)
    wrong = [{"tool_call_id": "call_nope", "output": "x"}]
    with pytest.raises(openai.BadRequestError, match="Expected tool outputs"):
        client.beta.threads.runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=wrong)
    second = Collector()
    with client.beta.threads.runs.submit_tool_outputs_stream(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "21 C"}],
        event_handler=second,
    ) as stream:
        stream.until_done()
    assert second.text == ANSWER and second.events[0] == "thread.run.step.completed"
    assert stream.current_run is not None and stream.current_run.status == "completed"


def test_additional_instructions_last_the_whole_run(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, engine, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL, tools=[WEATHER], instructions="Base.")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "call get_weather"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id,
                                                   additional_instructions="Use Celsius.", poll_interval_ms=20)
    assert turns(engine)[0] == ("system", "Base.\n\nUse Celsius.")
    [call] = run.required_action.submit_tool_outputs.tool_calls  # type: ignore[union-attr]
    client.beta.threads.runs.submit_tool_outputs_and_poll(
        run_id=run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": call.id, "output": "21"}], poll_interval_ms=20)
    assert turns(engine)[0] == ("system", "Base.\n\nUse Celsius.")  # the continuation is given them too


def test_an_empty_answer_is_still_a_message() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(output_tokens=0))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assistant = client.beta.assistants.create(model=CHAT_MODEL)
        run = client.beta.threads.create_and_run_poll(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "x"}]}, poll_interval_ms=20)
        assert run.status == "completed"
        answer = client.beta.threads.messages.list(run.thread_id).data[0]
        assert answer.role == "assistant" and answer.content[0].text.value == ""  # type: ignore[union-attr]


def test_cancel_stops_the_generation() -> None:
    app, engines = build_fake_app(engine_config=FakeEngineConfig(token_interval_s=0.3, output_tokens=100))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assistant = client.beta.assistants.create(model=CHAT_MODEL)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "long job"}])
        run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, max_completion_tokens=60)
        assert run.status == "queued"
        wait_until(lambda: engines[CHAT_MODEL].in_flight)
        with pytest.raises(openai.BadRequestError, match="active run"):
            client.beta.threads.messages.create(thread.id, role="user", content="meanwhile")
        cancelling = client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
        assert cancelling.status in ("cancelling", "cancelled")
        wait_until(lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled")
        wait_until(lambda: not engines[CHAT_MODEL].in_flight)
        assert engines[CHAT_MODEL].aborted  # the generation stopped, not just the row
        with pytest.raises(openai.BadRequestError, match="Cannot cancel"):
            client.beta.threads.runs.cancel(run.id, thread_id=thread.id)
        # The thread is free again.
        assert client.beta.threads.messages.create(thread.id, role="user", content="next").role == "user"


def test_a_client_that_leaves_a_stream_cancels_the_run() -> None:
    app, engines = build_fake_app(engine_config=FakeEngineConfig(token_interval_s=0.1, output_tokens=100))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assistant = client.beta.assistants.create(model=CHAT_MODEL)
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "go"}])
        body = {"assistant_id": assistant.id, "stream": True, "max_completion_tokens": 60}
        with httpx.stream("POST", f"{url}/v1/threads/{thread.id}/runs", json=body) as reply:
            for line in reply.iter_lines():
                if line == "event: thread.message.delta":
                    break
        wait_until(lambda: engines[CHAT_MODEL].aborted)
        [run] = client.beta.threads.runs.list(thread.id)
        wait_until(lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "cancelled")


def test_failures_end_the_run_with_last_error() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=2))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assistant = client.beta.assistants.create(model=CHAT_MODEL)
        run = client.beta.threads.create_and_run_poll(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "x"}]}, poll_interval_ms=20
        )
        assert run.status == "failed" and run.failed_at is not None
        assert run.last_error is not None and run.last_error.code == "server_error"
        [answer, _] = client.beta.threads.messages.list(run.thread_id)
        assert answer.status == "incomplete" and answer.incomplete_details.reason == "run_failed"  # type: ignore[union-attr]


def test_stale_and_expired_runs_are_closed_when_polled(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    thread = client.beta.threads.create()
    now = time.time()
    base = {"object": "thread.run", "thread_id": thread.id, "assistant_id": "asst_x", "required_action": None,
            "last_error": None, "expires_at": int(now) + 600}
    dead = StoredRun(id="run_dead", owner="", thread_id=thread.id, status="in_progress",
                     body={**base, "id": "run_dead", "status": "in_progress"}, worker="gone:1",
                     heartbeat_at=now - 3600, created_at=now - 3600)
    waiting = StoredRun(id="run_wait", owner="", thread_id=thread.id, status="requires_action",
                        body={**base, "id": "run_wait", "status": "requires_action", "expires_at": int(now) - 1},
                        worker="gone:1", heartbeat_at=now, created_at=now - 700)
    # Written as a replica that died would have left them, in the same (default SQLite) database.
    store = SqlAssistantsStore(SqlStateStore(IngressSettings().state.database_url()))

    async def leave_behind() -> None:
        await store.put_run(dead)
        await store.put_run(waiting)
        await store.base.close()

    asyncio.run(leave_behind())
    failed = client.beta.threads.runs.retrieve("run_dead", thread_id=thread.id)
    assert failed.status == "failed" and failed.last_error is not None and "stopped" in failed.last_error.message
    assert client.beta.threads.runs.retrieve("run_wait", thread_id=thread.id).status == "expired"


# -- bad input and ownership -------------------------------------------------------------------------


def test_unknown_ids_and_deleted_assistants_are_404(served: tuple[OpenAI, FakeEngine, str]) -> None:
    client, _, _ = served
    assistant = client.beta.assistants.create(model=CHAT_MODEL)
    thread = client.beta.threads.create()
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.create(thread_id="thread_nope", assistant_id=assistant.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.retrieve("run_nope", thread_id=thread.id)
    with pytest.raises(openai.NotFoundError):
        client.beta.assistants.create(model="no-such-model")
    client.beta.assistants.delete(assistant.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert info.value.body["param"] == "assistant_id"  # type: ignore[index]
    embedder = client.beta.assistants.create(model=EMBED_MODEL)
    with pytest.raises(openai.BadRequestError, match="does not support generate"):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=embedder.id)
    with pytest.raises(openai.BadRequestError, match="not a tool of the run"):
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=embedder.id, model=CHAT_MODEL,
                                        tool_choice={"type": "function", "function": {"name": "nope"}})
    # A refused create-thread-and-run stores no thread.
    before = asyncio.run(_count("thread"))
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.create_and_run(assistant_id=embedder.id, thread={"messages": [{"role": "user", "content": "x"}]})
    assert asyncio.run(_count("thread")) == before


async def _count(kind: Any) -> int:
    store = SqlAssistantsStore(SqlStateStore(IngressSettings().state.database_url()))
    try:
        return len((await store.list_objects(kind, "", Cursor(limit=1_000_000))).items)
    finally:
        await store.base.close()


def test_each_key_sees_only_its_own_objects() -> None:
    app, _ = build_fake_app(IngressSettings(api_keys=["sk-alice", "sk-bob"]))
    with serve_in_thread(app) as url:
        alice = OpenAI(base_url=f"{url}/v1", api_key="sk-alice", max_retries=0)
        bob = OpenAI(base_url=f"{url}/v1", api_key="sk-bob", max_retries=0)
        assistant = alice.beta.assistants.create(model=CHAT_MODEL)
        run = alice.beta.threads.create_and_run_poll(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "mine"}]}, poll_interval_ms=20
        )
        assert list(bob.beta.assistants.list()) == []
        bob_thread = bob.beta.threads.create()
        for call in (
            lambda: bob.beta.assistants.retrieve(assistant.id),
            lambda: bob.beta.assistants.delete(assistant.id),
            lambda: bob.beta.threads.retrieve(run.thread_id),
            lambda: bob.beta.threads.messages.list(run.thread_id),
            lambda: bob.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id),
            lambda: bob.beta.threads.runs.create(thread_id=bob_thread.id, assistant_id=assistant.id),
            lambda: bob.beta.threads.delete(run.thread_id),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert alice.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "completed"


def test_background_run_tokens_count_against_the_keys_limit() -> None:
    settings = IngressSettings(keys=[{"name": "team-a", "key": "sk-a", "tokens_per_minute": 12, "burst": 12}])
    app, engines = build_fake_app(settings, FakeEngineConfig(token_interval_s=0.01))
    with serve_in_thread(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-a", max_retries=0)
        assistant = client.beta.assistants.create(model=CHAT_MODEL)
        run = client.beta.threads.create_and_run(
            assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "a b c d e f g h"}]},
        )
        assert run.status == "queued"
        wait_until(lambda: engines[CHAT_MODEL].completed == 1)

        def refused() -> bool:
            try:
                client.beta.assistants.list()  # costs no tokens itself
            except openai.RateLimitError as exc:
                assert "tokens_per_minute" in str(exc)
                return True
            return False

        # The run ended after its request did; its 17 tokens still emptied the key's bucket (the
        # charge follows the run's last writes; the bucket stays empty for about 25 s).
        wait_until(refused)
    usage_stored = asyncio.run(_run_usage(run.thread_id, run.id, "team-a"))
    assert usage_stored == {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}


async def _run_usage(thread_id: str, run_id: str, owner: str) -> Any:
    store = SqlAssistantsStore(SqlStateStore(IngressSettings().state.database_url()))
    try:
        stored = await store.get_run(owner, thread_id, run_id)
        return None if stored is None else stored.body["usage"]
    finally:
        await store.base.close()
