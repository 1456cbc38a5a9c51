"""Policy: what is reachable from outside, where secrets come from, where GPUs and replicas land."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s.manifests import OVERLAYS, all_documents, containers, groups, overlay, rayservice

RAY_INTERNAL_PORTS = {8265, 6379, 10001}  # dashboard, GCS, Ray client
SECRETISH = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
RAY_PODS = {"app.kubernetes.io/name": "llm-serving-cluster"}


def services() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, doc in all_documents():
        if doc["kind"] == "Service":
            yield f"{name}/{doc['metadata']['name']}", doc["spec"]
        if doc["kind"] == "RayService":
            yield f"{name}/serveService", doc["spec"]["serveService"]["spec"]


def env_entries(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every entry of every `env` list anywhere in a document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                for entry in value:
                    yield f"{where}.env.{entry['name']}", entry
            else:
                yield from env_entries(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from env_entries(value, f"{where}[{i}]")


@pytest.mark.parametrize("label, spec", list(services()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_service_exposes_ray_internal_ports(label, spec):
    for port in spec.get("ports", []):
        assert port["port"] not in RAY_INTERNAL_PORTS and port.get("targetPort") not in RAY_INTERNAL_PORTS


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_the_load_balancer_publishes_only_serve(name):
    spec = rayservice(name)["spec"]
    assert spec["serveService"]["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in spec["serveService"]["spec"]["ports"]] == [8000]
    head = spec["rayClusterConfig"]["headGroupSpec"]
    # the head Service carries dashboard, GCS and client ports: it must stay cluster-internal
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not head.get("enableIngress", False)
    assert "headService" not in head


def network_policies(name: str) -> list[dict[str, Any]]:
    return [d for d in overlay(name) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_network_policies_admit_outsiders_only_to_8000_and_the_operator_only_to_the_dashboard(name):
    lb_ports: set[int] = set()
    for policy in network_policies(name):
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"].items() >= RAY_PODS.items()
        assert "Ingress" in spec["policyTypes"]
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            assert peers, f"{policy['metadata']['name']}: a rule without `from` admits everyone"
            inside = all(p.keys() == {"podSelector"} and p["podSelector"]["matchLabels"] == RAY_PODS for p in peers)
            if inside:
                continue  # Ray pods among themselves
            ports = {p["port"] for p in rule.get("ports", [])}
            assert ports, f"{policy['metadata']['name']}: outsiders admitted on every port"
            head_only = spec["podSelector"]["matchLabels"].get("ray.io/node-type") == "head"
            if head_only:  # the KubeRay operator: Serve's REST API on the dashboard (and its agent)
                assert all("namespaceSelector" in p and "ipBlock" not in p for p in peers)
                assert ports <= {8265, 52365}
            else:
                assert ports == {8000}
                lb_ports |= ports
    assert lb_ports == {8000}


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_gpu_requests_equal_limits(name):
    for where, container in containers(rayservice(name)):
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        for key in set(requests) | set(limits):
            if "gpu" in key:
                assert requests.get(key) == limits.get(key), where


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_gpu_groups_tolerate_the_gpu_taint_and_pick_a_gpu_class(name):
    for group_name, group in groups(rayservice(name)):
        pod = group["template"]["spec"]
        if not any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["containers"]):
            continue
        assert any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", [])), group_name
        assert "nvidia.com/gpu.product" in pod.get("nodeSelector", {}), group_name


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_secrets_come_only_from_secret_key_refs(name):
    secretish = []
    for _, doc in ((n, d) for n, d in all_documents() if n == name):
        for where, entry in env_entries(doc):
            if SECRETISH.search(entry["name"]):
                secretish.append(where)
                assert "value" not in entry and set(entry["valueFrom"]) == {"secretKeyRef"}, where
    assert any(w.endswith("LLM_API_KEYS") for w in secretish)
    gcs = rayservice(name)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"]
    assert set(gcs["redisPassword"]) == {"valueFrom"} and "secretKeyRef" in gcs["redisPassword"]["valueFrom"]


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_cluster_settings(name):
    spec = rayservice(name)["spec"]
    cluster = spec["rayClusterConfig"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]
    assert cluster["authOptions"]["mode"] == "token"
    assert spec["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade"}
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert group.get("replicas", group["minReplicas"]) >= group["minReplicas"]
