"""k8s/monitoring: Prometheus Operator scrapes Ray's metrics export on every Ray pod of each overlay.

The cluster-wide figures are Ray's export (every ingress replica's ``ray_llm_*`` series, on every
node); this checks the wiring that makes a scrape reach all of them.
"""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.k8s.manifests import K8S, KUBERNETES_VERSION, OVERLAYS, build, groups, rayservice

RAY_METRICS_PORT = 8080  # KubeRay starts every Ray node with --metrics-export-port=8080


def monitoring() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in build(K8S / "monitoring")}


def test_the_monitoring_folder_holds_a_podmonitor_and_its_network_policy() -> None:
    docs = monitoring()
    assert set(docs) == {"PodMonitor", "NetworkPolicy"}
    assert docs["PodMonitor"]["apiVersion"] == "monitoring.coreos.com/v1"
    kubernetes_validate.validate(docs["NetworkPolicy"], KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_every_ray_pod_is_scraped_on_its_metrics_port(name: str) -> None:
    docs = monitoring()
    monitor = docs["PodMonitor"]["spec"]
    [endpoint] = monitor["podMetricsEndpoints"]
    admitted = docs["NetworkPolicy"]["spec"]
    scraped_groups = 0
    for group, spec in groups(rayservice(name)):
        labels = spec["template"]["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items(), group
        assert admitted["podSelector"]["matchLabels"].items() <= labels.items(), group
        ray_container = spec["template"]["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in ray_container.get("ports", [])}
        assert ports.get(endpoint["port"]) == RAY_METRICS_PORT, (group, ports)
        scraped_groups += 1
    assert scraped_groups >= 2  # the head and at least one worker group
    assert [p["port"] for rule in admitted["ingress"] for p in rule["ports"]] == [RAY_METRICS_PORT]
