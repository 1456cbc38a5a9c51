"""One real stack for every end-to-end module of this package: config.yaml's graph on CPU.

Package-scoped, so the modules that drive it (``test_stack``, ``test_stack_openwebui``) share one
start (a minute or two on 2 cores); it stops when the package's last test has run, before the
integration tests start their own Ray clusters. ``test_gpu_stack`` overrides ``stack``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest

from tests.e2e.stack_support import CHAT, app_config
from tests.integration.harness import deploy, local_ray


@pytest.fixture(scope="package")
def stack() -> Iterator[dict[str, Any]]:
    app = app_config()
    with local_ray(num_cpus=4, runtime_env=app.get("runtime_env")) as port:
        started = time.monotonic()
        deploy(app["args"])
        url = f"http://127.0.0.1:{port}"
        print(f"\nconfig.yaml graph ready in {time.monotonic() - started:.0f} s")
        yield {"url": url, "args": app["args"]}


@pytest.fixture(scope="package")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from deployments.model_sources import resolve_model_source

    source = next(m for m in app_config()["args"]["models"] if m["name"] == CHAT)["engine_args"]["source"]
    return AutoTokenizer.from_pretrained(resolve_model_source(source))


@pytest.fixture
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['url']}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def ollama_client(stack: dict[str, Any]) -> ollama.Client:
    return ollama.Client(host=stack["url"], timeout=300)
