"""The end-to-end suite against config.gpu.yaml's graph on a GPU (marked ``gpu``).

Runs every test of ``test_stack.py`` with that module's fixtures overridden: the graph is
config.gpu.yaml with its chat model swapped for the small offline SmolLM2 (bf16 on the GPU), so
it needs no network. Skipped where no NVIDIA GPU is visible.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e import stack_support
from tests.e2e.test_stack import *  # noqa: F403 - the same tests, collected here with the fixtures below
from tests.integration.harness import deploy, local_ray


def _gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, check=False).returncode == 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.vllm,
    pytest.mark.skipif(not _gpu_present(), reason="no NVIDIA GPU"),
    pytest.mark.timeout(1200),
]


def gpu_app_config() -> dict[str, Any]:
    """config.gpu.yaml's application with the offline SmolLM2 as its chat model."""
    app = yaml.safe_load((stack_support.REPO / "config.gpu.yaml").read_text())["applications"][0]
    app = copy.deepcopy(app)
    cpu_chat = next(m for m in stack_support.app_config()["args"]["models"] if m["name"] == stack_support.CHAT)
    chat = app["args"]["models"][0]
    chat.update(name=stack_support.CHAT, aliases=["smollm2", "gpt-4o-mini"], context_length=2048,
                capabilities=cpu_chat["capabilities"])
    chat["engine_args"] = {
        "source": cpu_chat["engine_args"]["source"],
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.5,
        "chat_template": cpu_chat["engine_args"]["chat_template"],
        "tool_call_parser": cpu_chat["engine_args"]["tool_call_parser"],
    }
    chat["deployment"]["autoscaling_config"]["min_replicas"] = 1
    chat["deployment"]["autoscaling_config"]["max_replicas"] = 1
    for model in app["args"]["models"]:
        model["deployment"]["ray_actor_options"].pop("resources", None)
    app["args"]["ingress"]["deployment"]["ray_actor_options"].pop("resources", None)
    app["args"]["ingress"]["deployment"]["autoscaling_config"]["min_replicas"] = 1
    return app


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    app = gpu_app_config()
    with local_ray(num_cpus=16, num_gpus=1, runtime_env=app.get("runtime_env")) as port:
        started = time.monotonic()
        deploy(app["args"])
        print(f"\nconfig.gpu.yaml graph ready in {time.monotonic() - started:.0f} s")
        yield {"url": f"http://127.0.0.1:{port}", "args": app["args"]}
