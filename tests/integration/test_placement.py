"""On a simulated two-node cluster, LLM replicas land on the GPU node and the ingress does not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray._private import state as ray_state
from ray.cluster_utils import Cluster

from deployments.app import build_app
from tests.integration.harness import APP_NAME, fake_config_args, model_deployment, replica_actor_names
from tests.servers import free_port

pytestmark = pytest.mark.ray


def _placed_args() -> dict[str, Any]:
    """config.fake.yaml with the placement a GPU cluster uses (see config.gpu.yaml)."""
    args = fake_config_args()
    for model in args["models"]:
        actor = model["deployment"]["ray_actor_options"]
        if model.get("kind", "generate") == "generate":
            actor["num_gpus"] = 0.5  # a (fake) GPU each: only the GPU node has one
        else:
            actor["resources"] = {"cpu_worker": 0.01}
    args["ingress"]["deployment"]["ray_actor_options"]["resources"] = {"cpu_worker": 0.01}
    return args


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Cluster, str, str]]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "resources": {"cpu_worker": 1}, "include_dashboard": False},
    )
    gpu_node = cluster.add_node(num_cpus=4, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(_placed_args()), name=APP_NAME, route_prefix="/")
        yield cluster, gpu_node.node_id, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _node_of(actor_name: str) -> str:
    actor_id = ray.get_actor(actor_name, namespace="serve")._actor_id.hex()
    return ray_state.actors(actor_id=actor_id)["Address"]["NodeID"]


def test_llm_replicas_on_gpu_node_ingress_and_embeddings_elsewhere(cluster: tuple[Cluster, str, str]) -> None:
    _, gpu_node_id, url = cluster
    args = _placed_args()
    for model in args["models"]:
        names = replica_actor_names(model_deployment(args, model["name"]))
        assert names, model["name"]
        on_gpu = {_node_of(n) == gpu_node_id for n in names}
        assert on_gpu == {model.get("kind", "generate") == "generate"}, model["name"]
    (ingress,) = replica_actor_names("Ingress")
    assert _node_of(ingress) != gpu_node_id
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "tok0 tok1 "
