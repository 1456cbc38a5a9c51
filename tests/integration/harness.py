"""Running the real Serve graph on a local Ray (CPU, fake engine) for integration tests."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from ray import serve

from deployments.app import build_app, deployment_name
from deployments.config import parse_app_config
from tests.postgres import postgres_available, postgres_server
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
APP_NAME = "llm"


def fake_config_args() -> dict[str, Any]:
    """The ``args`` of config.fake.yaml, exactly as ``serve run`` would pass them."""
    config = yaml.safe_load((REPO / "config.fake.yaml").read_text())
    return copy.deepcopy(config["applications"][0]["args"])


def serve_env() -> dict[str, str]:
    """The env vars config.fake.yaml gives Serve's controller (and so its proxy and replicas)."""
    config = yaml.safe_load((REPO / "config.fake.yaml").read_text())
    return dict(config["controller_options"]["runtime_env"]["env_vars"])


@contextmanager
def local_ray(num_cpus: int = 8, **init_kwargs: Any) -> Iterator[int]:
    """A local Ray with Serve's HTTP proxy on a free loopback port; yields the port.

    Logical CPUs exceed the 2 real cores so fractional replicas all fit (FACTS.md).
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The cluster runs as in production: the Serve settings of the config files'
    # controller_options (throughput-optimised mode, HAProxy front, control loop), inherited by
    # the processes ray.init starts. This test process read Serve's constants at import without
    # them, so its handles (engine_stats, called from threads) keep their router on a separate loop.
    for name, value in serve_env().items():
        os.environ.setdefault(name, value)
    # An ingress replica serving HTTP itself stays up 30 s after it is told to stop, so that load
    # balancers stop sending to it first; no load balancer deregisters anything here, and each
    # module's teardown would wait those 30 s.
    os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "1")
    port = free_port()
    _init_ray(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, **init_kwargs)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def _init_ray(**kwargs: Any) -> None:
    """``ray.init``, tried twice: on a loaded 2-core machine the raylet of a new local cluster,
    started right after the previous module's cluster was torn down, has once missed Ray's fixed
    30 s window to register with the GCS ("The current node timed out during startup")."""
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
        if "timed out during startup" not in str(exc):
            raise
        ray.shutdown()
        ray.init(**kwargs)


@contextmanager
def shared_database(env_name: str = "LLM_TEST_DATABASE_URL") -> Iterator[dict[str, Any]]:
    """A throwaway PostgreSQL server whose URL is in ``env_name`` for the Ray cluster started
    meanwhile (its processes inherit this one's environment); yields the ingress ``state``
    settings that point at it."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed on this machine")
    with postgres_server() as url:
        os.environ[env_name] = url
        try:
            yield {"database_url_env": env_name}
        finally:
            os.environ.pop(env_name, None)


@contextmanager
def deployed(args: dict[str, Any], num_cpus: int = 8) -> Iterator[str]:
    """A local Ray running the graph of ``args``; yields its base URL (a module's fixture)."""
    with local_ray(num_cpus=num_cpus) as port:
        deploy(args)
        yield f"http://127.0.0.1:{port}"


def deploy(args: dict[str, Any], name: str = APP_NAME, route_prefix: str = "/") -> None:
    """Build the graph with the same builder ``serve run`` uses and wait until it is running."""
    serve.run(build_app(args), name=name, route_prefix=route_prefix)


def model_deployment(args: dict[str, Any], model: str) -> str:
    """The Serve deployment name of a configured model."""
    config = parse_app_config(args)
    return deployment_name(next(m for m in config.models if m.name == model))


def engine_stats(args: dict[str, Any], model: str, app: str = APP_NAME) -> dict[str, Any]:
    """The fake engine's counters from the (single) replica of ``model``."""
    handle = serve.get_deployment_handle(model_deployment(args, model), app_name=app)
    return handle.engine_stats.remote().result(timeout_s=30)


def running_replicas(deployment: str, app: str = APP_NAME) -> int:
    """How many replicas of ``deployment`` Serve reports RUNNING."""
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2, what: str = "") -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")


def replica_actor_names(deployment: str, app: str = APP_NAME) -> list[str]:
    """Names of the live replica actors of ``deployment``."""
    names = ray.util.list_named_actors(all_namespaces=True)
    return [
        a["name"]
        for a in names
        if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")
    ]
