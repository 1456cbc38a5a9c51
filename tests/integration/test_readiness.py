"""Operations through Ray Serve: a model that fails to start, shared key limits, metrics.

One cluster for the module: a healthy fake model, a fake model whose engine fails on start
(Serve gives up after one retry), and two ingress replicas sharing one key-limits actor (and,
as any two ingress replicas must, one PostgreSQL state store).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from deployments.app import build_app
from tests.integration.harness import APP_NAME, local_ray, shared_database, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.ray

OPEN_KEY = "sk-ops-open-0123456789"
LIMITED_KEY = "sk-ops-limited-0123456789"
RPM_BURST = 3


def _model(name: str, engine_args: dict[str, Any], **deployment: Any) -> dict[str, Any]:
    return {
        "name": name,
        "engine": "fake",
        "engine_args": engine_args,
        "deployment": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, **deployment},
    }


ARGS: dict[str, Any] = {
    "models": [
        _model("good:1", {"token_interval_s": 0.0, "output_tokens": 4}),
        _model("broken:1", {"fail_on_start": True}, max_constructor_retry_count=1),
    ],
    "ingress": {
        "settings": {
            "keys": [
                {"name": "ops", "key": OPEN_KEY},
                # A 1-per-minute refill: only the burst gets through in this test's time.
                {"name": "tight", "key": LIMITED_KEY, "requests_per_minute": 1, "burst": RPM_BURST},
            ]
        },
        "deployment": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.1}},
    },
}
AUTH = {"authorization": f"Bearer {OPEN_KEY}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, str]]:
    """(the API's base URL, this node's Ray metrics export) of the module's cluster."""
    metrics_port = free_port()
    # Ray's metrics agent on a known port, reporting every half second (Ray's default is 10 s).
    ray_metrics = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 500}}
    with shared_database() as state, local_ray(num_cpus=8, **ray_metrics) as port:
        args = {**ARGS, "ingress": {**ARGS["ingress"], "settings": {**ARGS["ingress"]["settings"], "state": state}}}
        # serve.run waits for the app to be RUNNING, which a failing deployment never is.
        serve._run(build_app(args), name=APP_NAME, route_prefix="/", _blocking=False)
        base = f"http://127.0.0.1:{port}"

        def states() -> dict[str, str]:
            try:
                reply = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=5)
            except httpx.HTTPError:
                return {}
            if reply.status_code != 200:
                return {}
            return {m["id"]: m.get("state", "") for m in reply.json()["data"]}

        wait_for(
            lambda: states() == {"good:1": "ready", "broken:1": "failed"},
            timeout_s=120,
            interval_s=0.5,
            what="good:1 ready and broken:1 failed",
        )
        yield base, f"http://127.0.0.1:{metrics_port}/metrics"


@pytest.fixture(scope="module")
def url(cluster: tuple[str, str]) -> str:
    return cluster[0]


def test_failed_model_is_listed_as_failed_while_the_other_serves(url: str) -> None:
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]
    broken = next(m for m in models if m["id"] == "broken:1")
    assert broken["state"] == "failed"
    tags = httpx.get(f"{url}/api/tags", headers=AUTH).json()["models"]
    assert {t["name"]: t.get("state") for t in tags} == {"good:1": "ready", "broken:1": "failed"}

    with openai.OpenAI(base_url=f"{url}/v1", api_key=OPEN_KEY, max_retries=0, timeout=30) as client:
        reply = client.chat.completions.create(model="good:1", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 "
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model="broken:1", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 503
    assert raised.value.body["code"] == "model_unavailable"  # type: ignore[index]
    assert "failed to start" in raised.value.body["message"]  # type: ignore[index]

    started = time.monotonic()
    reply = httpx.post(
        f"{url}/api/chat",
        json={"model": "broken:1", "messages": [{"role": "user", "content": "hi"}]},
        headers=AUTH,
        timeout=30,
    )
    assert reply.status_code == 503
    assert set(reply.json()) == {"error"} and "failed to start" in reply.json()["error"]
    assert time.monotonic() - started < 10  # answered at once, not queued behind Serve


def test_key_limits_hold_across_ingress_replicas(url: str) -> None:
    headers = {"authorization": f"Bearer {LIMITED_KEY}"}
    replies = [httpx.get(f"{url}/v1/models", headers=headers, timeout=10) for _ in range(2 * RPM_BURST + 2)]
    statuses = [r.status_code for r in replies]
    # Two ingress replicas with their own books would let up to twice the burst through.
    assert statuses.count(200) == RPM_BURST, statuses
    refused = [r for r in replies if r.status_code == 429]
    assert refused and all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in refused)
    assert all(float(r.headers["retry-after-ms"]) > 0 for r in refused)


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """``name`` summed over every series carrying ``labels`` (over replicas, for Ray's export)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_cluster_wide_metrics_count_every_replicas_requests(cluster: tuple[str, str]) -> None:
    """Ray's export (what Prometheus scrapes per node, k8s/monitoring) counts the requests of both
    ingress replicas exactly, whichever replica served each; GET /metrics is one replica's."""
    base, ray_export = cluster
    # A series no other test of the module touches: its count starts at nothing, whatever Ray
    # has or has not reported yet of the earlier tests.
    route = {"model": "good:1", "route": "/api/chat", "status": "200"}

    def exported() -> float:
        try:
            return total(samples_of(httpx.get(ray_export, timeout=10).text), "ray_llm_requests_total", **route)
        except httpx.HTTPError:
            return -1.0

    wait_for(lambda: exported() >= 0, timeout_s=60, what="Ray's metrics export to answer")
    assert exported() == 0
    sent = 12
    for _ in range(sent):
        httpx.post(
            f"{base}/api/chat",
            json={"model": "good:1", "messages": [{"role": "user", "content": "hi"}], "stream": False},
            headers=AUTH,
            timeout=30,
        ).raise_for_status()
    wait_for(lambda: exported() >= sent, timeout_s=60, what=f"{sent} requests in Ray's export")
    time.sleep(1.5)  # three report intervals more: the count must stay exact, never double
    assert exported() == sent
    samples = samples_of(httpx.get(ray_export, timeout=10).text)
    # One series per ingress replica (whichever of them served requests), each named.
    assert all(dict(ls).get("replica") for (n, ls) in samples if n == "ray_llm_requests_total")
    assert total(samples, "ray_llm_completion_tokens_total", model="good:1") >= 4 * sent
    assert OPEN_KEY not in httpx.get(ray_export, timeout=10).text

    reply = httpx.get(f"{base}/metrics", headers=AUTH, timeout=10)
    assert reply.status_code == 200
    this_replica = total(samples_of(reply.text), "llm_requests_total", **route)
    assert this_replica <= exported()  # one replica's share: at most the cluster's figure
    assert OPEN_KEY not in reply.text and LIMITED_KEY not in reply.text
