"""Reading k8s/ the way `kubectl apply -k` would, without kustomize: overlays only list resources.

Also the KubeRay CRD schema made strict (unknown fields rejected) and walkers over containers/env.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
CRDS = REPO.parent / "shared" / "k8s" / "crds"
OVERLAYS = {"gpu": "config.gpu.yaml", "fake": "config.fake.yaml"}
KUBERNETES_VERSION = "1.33.0"
# Kustomization fields this reader understands; anything else (patches, generators) needs kustomize.
_KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources"}


def load_render_module():
    spec = importlib.util.spec_from_file_location("render_k8s", REPO / "scripts" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") or p.name == ".yamllint")


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def build(directory: Path) -> list[dict[str, Any]]:
    """The documents of a kustomization directory: its resources, recursively, namespace applied."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _KUSTOMIZE_FIELDS
    assert not unknown, f"{directory}: tests/k8s/manifests.py cannot build {sorted(unknown)}"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        docs.extend(build(target) if target.is_dir() else _load_docs(target))
    if "namespace" in kustomization:
        for doc in docs:
            doc.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return docs


@cache
def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(build(K8S / "overlays" / name))


def all_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in OVERLAYS:
        for doc in overlay(name):
            yield name, doc


def rayservice(name: str) -> dict[str, Any]:
    (doc,) = [d for d in overlay(name) if d["kind"] == "RayService"]
    return doc


def groups(rs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = rs["spec"]["rayClusterConfig"]
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group


def containers(rs: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, group in groups(rs):
        pod = group["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{name}/{container['name']}", container


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def strict_crd_schema(crd_file: str, version: str = "v1") -> dict[str, Any]:
    """The CRD's openAPIV3Schema with `additionalProperties: false` wherever fields are listed."""
    crd = yaml.safe_load((CRDS / crd_file).read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
