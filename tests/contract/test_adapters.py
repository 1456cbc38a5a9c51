"""LoRA adapters as models, over the fake engine (which models loading, capacity and eviction).

Built from a config the way ``make run`` builds one (``deployments.local_server``): a base model
with two listed adapters (one with an alias) and an adapter folder, driven by the real
``openai``, ``ollama`` and ``anthropic`` clients.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from fastapi.testclient import TestClient

from deployments.app import validate_config
from deployments.config import ConfigError
from deployments.engines.fake import FakeEngine
from deployments.local_server import build_local_app
from tests.contract.test_metrics import scrape, value
from tests.servers import serve_in_thread

BASE = "smollm2:135m"
PIRATE = "smollm2-pirate:135m"
POET = "smollm2-poet:135m"
USER = [{"role": "user", "content": "Say hi."}]


def write_adapter(folder: Path, rank: int = 8, modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A folder shaped like a PEFT LoRA adapter (its config; the fake engine reads no weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": list(modules)})
    )
    return folder


def adapter_args(tmp: Path, **lora: Any) -> dict[str, Any]:
    folder = tmp / "adapters"
    write_adapter(folder / "sailor")
    write_adapter(folder / "Shouty")
    write_adapter(folder / "wide", rank=64)
    write_adapter(folder / "vision", modules=("vision_tower",))
    return {
        "models": [
            {
                "name": BASE, "engine": "fake", "engine_args": {"adapter_load_s": 0.05}, "context_length": 256,
                "capabilities": ["completion", "tools"], "family": "llama",
                "adapters": [
                    {"name": PIRATE, "aliases": ["pirate"], "source": f"local:{write_adapter(tmp / 'pirate')}"},
                    {"name": POET, "source": f"local:{write_adapter(tmp / 'poet', rank=16)}"},
                ],
                "adapter_folder": str(folder),
                "lora": {"max_loras": 2, "max_lora_rank": 16, **lora},
            },
            {"name": "all-minilm:l6-v2", "kind": "embed", "engine": "fake", "embedding_dimensions": 384},
        ]
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, FakeEngine]]:
    app, backend = build_local_app(adapter_args(tmp_path))
    asyncio.run(backend.start())
    engine = backend.engines[BASE]
    assert isinstance(engine, FakeEngine)
    with serve_in_thread(app) as url:
        yield url, engine


def answer(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model=model, messages=USER, max_tokens=3)  # type: ignore[arg-type]
    assert reply.model in (model, PIRATE)
    return reply.choices[0].message.content or ""


def test_adapters_are_listed_as_models_of_their_base(served: tuple[str, FakeEngine]) -> None:
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    models = {m.id: m for m in client.models.list()}
    assert {BASE, PIRATE, POET} <= set(models)
    assert models[PIRATE].model_extra["parent"] == BASE and models[PIRATE].model_extra["root"] == BASE  # type: ignore[index]
    assert models[BASE].model_extra["parent"] is None and models[BASE].model_extra["root"] == BASE  # type: ignore[index]
    assert client.models.retrieve(PIRATE).model_extra["parent"] == BASE  # type: ignore[index]
    tags = {m.model: m for m in ollama.Client(host=url).list().models}
    assert {BASE, PIRATE, POET} <= set(tags)
    shown = ollama.Client(host=url).show(PIRATE)
    assert shown.details.parent_model == BASE
    assert f"FROM {BASE}\nADAPTER {PIRATE}" in (shown.modelfile or "")
    assert ollama.Client(host=url).show(BASE).details.parent_model == ""


def test_each_adapter_answers_as_itself_on_every_api(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    base, pirate, poet = answer(url, BASE), answer(url, PIRATE), answer(url, POET)
    assert base.startswith("tok0") and pirate.startswith("smollm2-pirate-tok0") and poet.startswith("smollm2-poet-tok0")
    assert answer(url, "pirate") == pirate  # its alias
    loaded = ollama.Client(host=url).generate(model=PIRATE)  # Ollama's load: no prompt
    assert loaded.done_reason == "load" and loaded.model == PIRATE
    generated = ollama.Client(host=url).generate(model=PIRATE, prompt="hi", options={"num_predict": 2})
    assert generated.response.startswith("smollm2-pirate-tok0") and generated.model == PIRATE
    chat = ollama.Client(host=url).chat(model=POET, messages=USER, options={"num_predict": 2})
    assert chat.message.content.startswith("smollm2-poet-tok0")
    message = anthropic.Anthropic(base_url=url, api_key="x").messages.create(model=PIRATE, max_tokens=2, messages=USER)  # type: ignore[arg-type]
    assert message.model == PIRATE and message.content[0].text.startswith("smollm2-pirate-tok0")  # type: ignore[union-attr]
    completion = openai.OpenAI(base_url=f"{url}/v1", api_key="x").completions.create(model=PIRATE, prompt="hi", max_tokens=2)
    assert completion.choices[0].text.startswith("smollm2-pirate-tok0")
    # Each adapter loaded once, on its first request.
    assert sorted(engine.adapters.held()) == sorted([PIRATE, POET]) and engine.adapters.loads == 2
    samples = scrape(url, {})
    assert value(samples, "llm_requests_total", model=PIRATE, api="openai", route="/v1/chat/completions") == 2
    assert value(samples, "llm_completion_tokens_total", model=POET) >= 3


def test_an_adapter_in_the_folder_is_served_by_name_without_being_listed(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    assert answer(url, f"{BASE}:sailor").startswith("sailor-tok0")
    assert answer(url, f"{BASE}:shouty").startswith("shouty-tok0")  # folder names compare case-insensitively
    assert answer(url, "smollm2:135M:Sailor").startswith("sailor-tok0")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    for missing in (f"{BASE}:nosuch", f"{BASE}:..", "smollm2:135m:../pirate", "all-minilm:l6-v2:sailor"):
        with pytest.raises(openai.NotFoundError) as refused:
            client.chat.completions.create(model=missing, messages=USER, max_tokens=2)  # type: ignore[arg-type]
        assert refused.value.code == "model_not_found", missing
    with pytest.raises(ollama.ResponseError) as gone:
        ollama.Client(host=url).chat(model=f"{BASE}:nosuch", messages=USER)
    assert gone.value.status_code == 404 and f"{BASE}:nosuch" in gone.value.error


def test_the_model_detail_routes_know_which_folder_adapters_exist(served: tuple[str, FakeEngine]) -> None:
    """``/api/show`` and ``/v1/models/{id}`` of ``<base>:<name>`` ask the base's engine, which
    looks in its folder without loading anything."""
    url, engine = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    local = ollama.Client(host=url)
    assert client.models.retrieve(f"{BASE}:sailor").model_extra["parent"] == BASE  # type: ignore[index]
    assert local.show(f"{BASE}:Sailor").details.parent_model == BASE
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve(f"{BASE}:nosuch")
    assert refused.value.code == "model_not_found" and f"{BASE}:nosuch" in refused.value.message
    with pytest.raises(ollama.ResponseError) as gone:
        local.show(f"{BASE}:nosuch")
    assert gone.value.status_code == 404 and f"{BASE}:nosuch" in gone.value.error
    assert engine.adapters.loads == 0 and not engine.adapters.held()  # looking is not loading


def test_an_adapter_the_base_cannot_take_is_a_400_naming_it_and_the_base_serves_on(
    served: tuple[str, FakeEngine],
) -> None:
    url, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    for name, reason in ((f"{BASE}:wide", "rank 64"), (f"{BASE}:vision", "vision_tower")):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=name, messages=USER, max_tokens=2)  # type: ignore[arg-type]
        assert refused.value.code == "adapter_load_failed" and name in refused.value.message and reason in refused.value.message
        assert refused.value.param == "model"
        ollama_error = httpx.post(f"{url}/api/chat", json={"model": name, "messages": USER, "stream": False})
        assert ollama_error.status_code == 400 and name in ollama_error.json()["error"]
    assert answer(url, BASE).startswith("tok0") and answer(url, PIRATE).startswith("smollm2-pirate-tok0")


def test_twenty_first_requests_together_load_the_adapter_once(served: tuple[str, FakeEngine]) -> None:
    url, engine = served

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        replies = await asyncio.gather(*(
            client.chat.completions.create(model=f"{BASE}:sailor", messages=USER, max_tokens=2)  # type: ignore[arg-type]
            for _ in range(20)
        ))
        return [r.choices[0].message.content or "" for r in replies]

    answers = asyncio.run(main())
    assert len(answers) == 20 and all(a.startswith("sailor-tok0") for a in answers)
    assert engine.adapters.loads == 1


def test_adapters_beyond_the_replicas_capacity_are_evicted_least_recently_used_first(
    served: tuple[str, FakeEngine],
) -> None:
    url, engine = served  # max_loras 2: the replica holds two
    for model in (PIRATE, POET, PIRATE, f"{BASE}:sailor"):
        answer(url, model)
    assert engine.adapters.held() == [PIRATE, f"{BASE}:sailor"]  # poet was the least recently used
    assert engine.adapters.evictions == 1 and engine.adapters.loads == 3
    answer(url, POET)  # loads again, evicting pirate
    assert engine.adapters.held() == [f"{BASE}:sailor", POET] and engine.adapters.loads == 4


def test_the_config_check_names_an_adapter_its_base_cannot_take(tmp_path: Path) -> None:
    args = adapter_args(tmp_path)
    adapters = args["models"][0]["adapters"]
    adapters.append({"name": "smollm2-wide:135m", "source": f"local:{write_adapter(tmp_path / 'w', rank=32)}"})
    adapters.append({"name": "smollm2-odd:135m", "source": f"local:{write_adapter(tmp_path / 'o', modules=('mlp.c_fc',))}"})
    adapters.append({"name": "smollm2-gone:135m", "source": f"local:{tmp_path / 'nowhere'}"})
    with pytest.raises(ConfigError) as refused:
        validate_config(args)
    text = str(refused.value)
    assert "models.0.adapters.2 (smollm2-wide:135m): adapter 'smollm2-wide:135m' has rank 32, over this model's max_lora_rank 16" in text
    assert "models.0.adapters.3 (smollm2-odd:135m)" in text and "mlp.c_fc" in text
    assert "models.0.adapters.4 (smollm2-gone:135m)" in text


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora": {"max_loras": 2, "max_cpu_loras": 1}}, "max_cpu_loras must be at least max_loras"),
        ({"lora": {"max_lora_rank": 12}}, "max_lora_rank"),
        ({"adapters": [], "adapter_folder": None}, "lora limits apply to a model with adapters"),
        ({"adapters": [{"name": BASE, "source": "local:/x"}]}, "claimed by both a model and an adapter"),
        ({"adapters": [{"name": "x:1", "aliases": ["gpt-4o"], "source": "local:/x"},
                       {"name": "y:1", "aliases": ["GPT-4o"], "source": "local:/x"}]}, "claimed by both 'x:1' and 'y:1'"),
    ],
)
def test_bad_adapter_settings_fail_loudly(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    args = adapter_args(tmp_path)
    args["models"][0].update(change)
    with pytest.raises(ConfigError) as refused:
        validate_config(args)
    assert message in str(refused.value)


def test_an_embedding_model_takes_no_adapters(tmp_path: Path) -> None:
    args = adapter_args(tmp_path)
    args["models"][1]["adapter_folder"] = str(tmp_path)
    with pytest.raises(ConfigError) as refused:
        validate_config(args)
    assert "adapters and adapter_folder apply to generate models" in str(refused.value)


def test_listed_adapters_keep_their_capabilities_and_the_bases_context(tmp_path: Path) -> None:
    cards = validate_config(adapter_args(tmp_path)).cards()
    assert cards[PIRATE].base_model == BASE and cards[PIRATE].context_length == 256
    assert cards[PIRATE].capabilities == ["completion", "tools"] and cards[BASE].loads_unlisted_adapters
    app, backend = build_local_app(adapter_args(tmp_path))
    with TestClient(app) as client:
        asyncio.run(backend.start())
        listed = client.get("/api/tags").json()["models"]
        assert [m["name"] for m in listed][:3] == [BASE, PIRATE, POET]
        assert next(m for m in listed if m["name"] == PIRATE)["details"]["parent_model"] == BASE
