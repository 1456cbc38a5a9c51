"""The Conversations API through the real ``openai`` client, and responses that use one."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from deployments.engines.fake import FakeEngine
from tests.conftest import CHAT_MODEL, build_fake_app
from tests.servers import serve_in_thread


@pytest.fixture
def served() -> Iterator[tuple[OpenAI, FakeEngine]]:
    app, engines = build_fake_app()
    with serve_in_thread(app) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0), engines[CHAT_MODEL]


def test_conversation_crud(served: tuple[OpenAI, FakeEngine]) -> None:
    client, _ = served
    conversation = client.conversations.create(metadata={"topic": "tea"},
                                               items=[{"role": "user", "content": "hello"}])
    assert conversation.id.startswith("conv_") and conversation.object == "conversation"
    assert client.conversations.retrieve(conversation.id).metadata == {"topic": "tea"}
    updated = client.conversations.update(conversation.id, metadata={"topic": "coffee"})
    assert updated.metadata == {"topic": "coffee"}
    deleted = client.conversations.delete(conversation.id)
    assert deleted.deleted and deleted.id == conversation.id
    with pytest.raises(openai.NotFoundError) as info:
        client.conversations.retrieve(conversation.id)
    assert info.value.body["param"] == "conversation_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conversation.id)


def test_items_add_list_get_delete(served: tuple[OpenAI, FakeEngine]) -> None:
    client, _ = served
    conversation = client.conversations.create()
    added = client.conversations.items.create(
        conversation.id, items=[{"role": "user", "content": f"m{i}"} for i in range(3)]
    )
    assert [i.content[0].text for i in added.data] == ["m0", "m1", "m2"]
    newest_first = client.conversations.items.list(conversation.id, limit=2)
    assert [i.content[0].text for i in newest_first.data] == ["m2", "m1"] and newest_first.has_more
    everything = [i.content[0].text for i in client.conversations.items.list(conversation.id, order="asc")]
    assert everything == ["m0", "m1", "m2"]
    item_id = added.data[1].id
    assert client.conversations.items.retrieve(item_id, conversation_id=conversation.id).id == item_id
    after = client.conversations.items.delete(item_id, conversation_id=conversation.id)
    assert after.id == conversation.id
    with pytest.raises(openai.NotFoundError) as info:
        client.conversations.items.retrieve(item_id, conversation_id=conversation.id)
    assert info.value.body["param"] == "item_id"  # type: ignore[index]
    remaining = [i.content[0].text for i in client.conversations.items.list(conversation.id, order="asc")]
    assert remaining == ["m0", "m2"]


def test_responses_read_and_append_to_the_conversation(served: tuple[OpenAI, FakeEngine]) -> None:
    client, engine = served
    conversation = client.conversations.create(items=[{"role": "user", "content": "my name is Ada"}])
    first = client.responses.create(model=CHAT_MODEL, input="remember it", conversation=conversation.id)
    assert first.conversation is not None and first.conversation.id == conversation.id
    second = client.responses.create(model=CHAT_MODEL, input="who am I?", conversation={"id": conversation.id})
    assert [(m.role, m.text()) for m in engine.recent_requests[-1].messages] == [
        ("user", "my name is Ada"),
        ("user", "remember it"),
        ("assistant", first.output_text),
        ("user", "who am I?"),
    ]
    items = client.conversations.items.list(conversation.id, order="asc").data
    assert [i.type for i in items] == ["message"] * 5
    assert items[-1].id == second.output[0].id  # the output item, with its own id


def test_store_false_still_appends_to_the_conversation(served: tuple[OpenAI, FakeEngine]) -> None:
    client, _ = served
    conversation = client.conversations.create()
    response = client.responses.create(model=CHAT_MODEL, input="hi", conversation=conversation.id, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    assert len(client.conversations.items.list(conversation.id).data) == 2


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c, cid: c.conversations.items.create(cid, items=[]), "items"),
        (lambda c, cid: c.conversations.items.create(cid, items=[{"role": "user", "content": "x"}] * 21), "items"),
        (lambda c, cid: c.conversations.items.create(cid, items=[{"type": "bogus"}]), "items[0]"),
        (lambda c, cid: c.conversations.update(cid, metadata={"k": "v" * 513}), "metadata.k"),
        (lambda c, cid: c.conversations.create(metadata={"k" * 65: "v"}), None),
    ],
)
def test_bad_input_is_a_400(served: tuple[OpenAI, FakeEngine], call, param: str | None) -> None:  # type: ignore[no-untyped-def]
    client, _ = served
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as info:
        call(client, conversation.id)
    if param is not None:
        assert info.value.body["param"] == param  # type: ignore[index]


def test_unknown_conversation_ids_are_404(served: tuple[OpenAI, FakeEngine]) -> None:
    client, _ = served
    for call in (
        lambda: client.conversations.retrieve("conv_missing"),
        lambda: client.conversations.update("conv_missing", metadata={}),
        lambda: client.conversations.delete("conv_missing"),
        lambda: client.conversations.items.create("conv_missing", items=[{"role": "user", "content": "x"}]),
        lambda: client.conversations.items.retrieve("msg_missing", conversation_id="conv_missing"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
