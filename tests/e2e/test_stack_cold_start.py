"""A cold start with real vLLM on CPU: config.yaml's chat model, scaled to zero, in a second
application beside the shared stack (same Ray cluster)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve

from tests.e2e.stack_support import CHAT, app_config
from tests.integration.harness import deploy, model_deployment, running_replicas, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

APP = "cold"
KEEP_ALIVE_S = 5


def _cold_args() -> dict[str, Any]:
    args = copy.deepcopy(app_config()["args"])
    chat = next(m for m in args["models"] if m["name"] == CHAT)
    chat["aliases"] = []
    chat["deployment"]["autoscaling_config"] = {"min_replicas": 0, "max_replicas": 1, "target_ongoing_requests": 32}
    chat["scale_to_zero"] = {"keep_alive_s": KEEP_ALIVE_S, "load_timeout_s": 600}
    args["models"] = [chat]
    return args


@pytest.fixture(scope="module")
def cold(stack: dict[str, Any]) -> Iterator[str]:
    args = _cold_args()
    deploy(args, name=APP, route_prefix=f"/{APP}")
    try:
        yield f"{stack['url']}/{APP}"
    finally:
        serve.delete(APP)


def test_a_scaled_to_zero_model_loads_on_its_first_request_and_unloads_when_idle(cold: str) -> None:
    deployment = model_deployment(_cold_args(), CHAT)
    assert running_replicas(deployment, app=APP) == 0
    assert {m["name"]: m["state"] for m in httpx.get(f"{cold}/api/tags").json()["models"]} == {CHAT: "unloaded"}
    started = time.monotonic()
    reply = httpx.post(
        f"{cold}/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "What is the capital of France?"}],
              "max_tokens": 16, "temperature": 0},
        timeout=600,
    )
    load_s = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    print(f"\ncold start to first answer: {load_s:.0f} s")
    ps = httpx.get(f"{cold}/api/ps").json()["models"]
    assert [m["name"] for m in ps] == [CHAT]
    wait_for(lambda: running_replicas(deployment, app=APP) == 0, timeout_s=120, what="the model unloaded when idle")
    # The ingress reads Serve's status through a short cache: /api/ps follows within a moment.
    wait_for(lambda: httpx.get(f"{cold}/api/ps").json()["models"] == [], timeout_s=30, what="/api/ps empty")
