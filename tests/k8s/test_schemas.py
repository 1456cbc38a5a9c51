"""Every manifest is clean YAML and valid: built-in kinds against Kubernetes' schemas, RayServices
against KubeRay v1.7.0's CRD with unknown fields rejected."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.k8s.manifests import (
    CRDS,
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    all_documents,
    groups,
    overlay,
    rayservice,
    strict_crd_schema,
    yaml_files,
)


def crd_errors(doc: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(strict_crd_schema("ray.io_rayservices.yaml"))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(K8S).as_posix())
def test_yamllint(path):
    config = YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = [f"{p.line}:{p.column} {p.message} ({p.rule})" for p in linter.run(path.read_text(), config)]
    assert not problems


def test_crd_schemas_are_here():
    assert (CRDS / "ray.io_rayservices.yaml").is_file(), f"expected the KubeRay CRDs in {CRDS}"


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_overlay_has_one_rayservice_and_no_secret(name):
    kinds = [d["kind"] for d in overlay(name)]
    assert kinds.count("RayService") == 1
    assert "Secret" not in kinds  # secrets are created out of band (k8s/README.md)


@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_rayservice_matches_the_kuberay_crd(name):
    assert crd_errors(rayservice(name)) == []


@pytest.mark.parametrize(
    "path, typo",
    [
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0), ("rayStartParams", "rayStartParam")),
        (("spec",), ("serveConfigV2", "serveConfigv2")),
        (("spec", "rayClusterConfig"), ("enableInTreeAutoscaling", "enableInTreeAutoScaling")),
        (("spec", "rayClusterConfig", "gcsFaultToleranceOptions"), ("redisAddress", "redisAdress")),
        (("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0), ("resources", "resource")),
    ],
)
def test_a_misspelt_field_fails_crd_validation(path, typo):
    doc = copy.deepcopy(rayservice("gpu"))
    node = doc
    for key in path:
        node = node[key]
    right, wrong = typo
    node[wrong] = node.pop(right)
    errors = crd_errors(doc)
    assert errors and any(wrong in e for e in errors), errors


def builtin_documents():
    """Built-in kinds, including those embedded in the RayService (its Service and pod templates)."""
    for name, doc in all_documents():
        if doc["kind"] != "RayService":
            yield f"{name}/{doc['kind']}/{doc['metadata']['name']}", doc
            continue
        serve = copy.deepcopy(doc["spec"]["serveService"])
        yield f"{name}/serveService", {"apiVersion": "v1", "kind": "Service", **serve}
        for group, spec in groups(doc):
            template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}}
            yield f"{name}/{group}/template", {**template, "template": spec["template"]}


@pytest.mark.parametrize("label, doc", list(builtin_documents()), ids=lambda v: v if isinstance(v, str) else "")
def test_builtin_kinds_pass_kubernetes_validate_strict(label, doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validate_strict_rejects_a_typo():
    doc = dict(next(d for label, d in builtin_documents() if label.endswith("serveService")))
    doc["spec"] = {**doc["spec"], "externalTraficPolicy": "Local"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
