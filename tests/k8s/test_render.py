"""The RayServices run exactly the project's Serve configs, and the committed files are fresh."""

from __future__ import annotations

import json

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import validate_config
from serve_app.settings import IngressSettings
from tests.k8s.manifests import OVERLAYS, REPO, containers, groups, load_render_module, rayservice

render_k8s = load_render_module()


def advertised(group: dict) -> dict[str, float]:
    """Custom resources a group advertises: rayStartParams `resources: '"{\\"name\\": n}"'`."""
    raw = group.get("rayStartParams", {}).get("resources")
    if raw is None:
        return {}
    value = json.loads(raw)  # the outer quotes KubeRay passes through to `ray start`
    return json.loads(value) if isinstance(value, str) else value


def serve_config(name: str) -> dict:
    return yaml.safe_load(rayservice(name)["spec"]["serveConfigV2"])


@pytest.mark.parametrize("profile", sorted(render_k8s.PROFILES))
def test_committed_rayservice_equals_a_fresh_render(profile):
    assert render_k8s.output_path(profile).read_text() == render_k8s.render(profile), "run `make k8s`"


def test_render_profiles_are_the_overlays():
    assert render_k8s.PROFILES == OVERLAYS


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_serve_config_is_the_config_file(overlay):
    embedded = serve_config(overlay)
    config = yaml.safe_load((REPO / OVERLAYS[overlay]).read_text())
    ServeDeploySchema.model_validate(embedded)
    assert embedded["applications"] == config["applications"]
    assert embedded == config
    for app in embedded["applications"]:
        validate_config(app["args"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_serve_port_is_the_published_port(overlay):
    rs = rayservice(overlay)
    port = serve_config(overlay).get("http_options", {}).get("port", 8000)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]}["serve"] == port
    assert [(p["name"], p["port"]) for p in rs["spec"]["serveService"]["spec"]["ports"]] == [("serve", port)]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_old_cluster_outlives_the_longest_request(overlay):
    delay = rayservice(overlay)["spec"]["rayClusterDeletionDelaySeconds"]
    for app in serve_config(overlay)["applications"]:
        config = validate_config(app["args"])
        assert delay > IngressSettings(**config.ingress.settings).request_deadline_s
        for model in app["args"]["models"]:
            assert delay > model.get("deployment", {}).get("graceful_shutdown_timeout_s", 0)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_placement_the_graph_asks_for_exists(overlay):
    rs = rayservice(overlay)
    worker_groups = dict(groups(rs))
    head = worker_groups.pop("head")
    assert advertised(head) == {}
    apps = serve_config(overlay)["applications"]
    options = [m.get("deployment", {}).get("ray_actor_options", {}) for a in apps for m in a["args"]["models"]]
    options += [a["args"]["ingress"].get("deployment", {}).get("ray_actor_options", {}) for a in apps]
    gpu_groups = {
        name
        for name, group in worker_groups.items()
        for c in group["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c["resources"].get("limits", {})
    }
    for opts in options:
        for resource in opts.get("resources", {}):
            assert any(resource in advertised(g) for g in worker_groups.values()), resource
        if opts.get("num_gpus"):
            assert gpu_groups, "a replica asks for GPUs but no worker group has any"
    if overlay == "fake":
        assert not gpu_groups


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_api_keys_reach_every_group_that_can_run_the_ingress(overlay):
    rs = rayservice(overlay)
    (app,) = serve_config(overlay)["applications"]
    needs = app["args"]["ingress"].get("deployment", {}).get("ray_actor_options", {}).get("resources", {})
    envs = {name: {e["name"] for e in c.get("env", [])} for name, c in containers(rs)}
    for name, group in groups(rs):
        if name == "head" or not all(r in advertised(group) for r in needs):
            continue
        for container in group["template"]["spec"]["containers"]:
            assert "LLM_API_KEYS" in envs[f"{name}/{container['name']}"], name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_state_database_url_reaches_every_group_that_can_run_the_ingress(overlay):
    """A config that names state.database_url_env gets that variable from a Secret wherever an
    ingress replica may be placed."""
    rs = rayservice(overlay)
    (app,) = serve_config(overlay)["applications"]
    ingress = app["args"]["ingress"]
    env_name = ingress.get("settings", {}).get("state", {}).get("database_url_env")
    if env_name is None:
        return  # one ingress replica on its own SQLite file
    needs = ingress.get("deployment", {}).get("ray_actor_options", {}).get("resources", {})
    checked = 0
    for name, group in groups(rs):
        if name == "head" or not all(r in advertised(group) for r in needs):
            continue
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env_name in env, name
            assert "secretKeyRef" in env[env_name]["valueFrom"], name  # never a literal URL
            checked += 1
    assert checked


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_image_sets_every_serve_setting_of_the_configs(overlay):
    """KubeRay may start Serve's controller before serveConfigV2 arrives: the image carries them."""
    dockerfile = (REPO / "k8s" / "Dockerfile").read_text().replace("\\\n", " ")
    env_lines = [line.split(None, 1)[1] for line in dockerfile.splitlines() if line.startswith("ENV ")]
    image_env = dict(item.split("=", 1) for line in env_lines for item in line.split())
    serve_env = serve_config(overlay)["controller_options"]["runtime_env"]["env_vars"]
    assert serve_env and {name: image_env.get(name) for name in serve_env} == serve_env
