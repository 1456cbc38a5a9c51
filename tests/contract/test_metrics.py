"""``GET /metrics`` after real clients' requests: counters, token counts and latency histograms."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from deployments.engines.fake import FakeEngineConfig
from serve_app.settings import IngressSettings
from tests.conftest import CHAT_MODEL, EMBED_MODEL, build_fake_app
from tests.servers import serve_in_thread

KEY = "sk-metrics-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
OUTPUT_TOKENS = 5


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of ``/metrics``, keyed by (sample name, labels)."""
    reply = httpx.get(f"{base_url}/metrics", headers=headers or AUTH)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name`` over samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    app, _ = build_fake_app(
        IngressSettings(api_keys=[KEY]),
        FakeEngineConfig(token_interval_s=0.005, output_tokens=OUTPUT_TOKENS),
    )
    with serve_in_thread(app) as base:
        yield base


def test_openai_streamed_chat_is_counted(url: str) -> None:
    before = scrape(url)
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",  # an alias: metrics carry the canonical name
            messages=[{"role": "user", "content": "hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
    assert usage is not None
    after = scrape(url)

    labels = {"model": CHAT_MODEL, "api": "openai", "route": "/v1/chat/completions", "status": "200"}
    assert value(after, "llm_requests_total", **labels, outcome="ok") - value(before, "llm_requests_total", **labels) == 1
    by_model = {"model": CHAT_MODEL, "api": "openai"}
    assert value(after, "llm_prompt_tokens_total", **by_model) - value(
        before, "llm_prompt_tokens_total", **by_model
    ) == usage.prompt_tokens
    assert value(after, "llm_completion_tokens_total", **by_model) - value(
        before, "llm_completion_tokens_total", **by_model
    ) == usage.completion_tokens == OUTPUT_TOKENS
    for histogram in ("llm_time_to_first_token_seconds", "llm_queue_wait_seconds"):
        assert value(after, f"{histogram}_count", **by_model) - value(before, f"{histogram}_count", **by_model) == 1
    assert value(after, "llm_time_to_first_token_seconds_sum", **by_model) > 0
    # One gap per token after the first.
    itl = "llm_inter_token_latency_seconds_count"
    assert value(after, itl, **by_model) - value(before, itl, **by_model) == OUTPUT_TOKENS - 1
    e2e = {"model": CHAT_MODEL, "api": "openai", "route": "/v1/chat/completions"}
    assert value(after, "llm_request_duration_seconds_count", **e2e) - value(
        before, "llm_request_duration_seconds_count", **e2e
    ) == 1
    key = {"key": "key-1", "model": CHAT_MODEL}
    assert value(after, "llm_key_requests_total", **key, outcome="ok") - value(
        before, "llm_key_requests_total", **key, outcome="ok"
    ) == 1
    assert value(after, "llm_key_tokens_total", **key, kind="completion") - value(
        before, "llm_key_tokens_total", **key, kind="completion"
    ) == OUTPUT_TOKENS
    assert value(after, "llm_requests_in_flight", api="openai") == 0


def test_ollama_chat_is_counted(url: str) -> None:
    before = scrape(url)
    client = ollama.Client(host=url, timeout=10, headers=AUTH)
    parts = list(client.chat(model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True))
    final = parts[-1]
    assert final.done
    after = scrape(url)
    labels = {"model": CHAT_MODEL, "api": "ollama", "route": "/api/chat", "status": "200", "outcome": "ok"}
    assert value(after, "llm_requests_total", **labels) - value(before, "llm_requests_total", **labels) == 1
    by_model = {"model": CHAT_MODEL, "api": "ollama"}
    assert value(after, "llm_completion_tokens_total", **by_model) - value(
        before, "llm_completion_tokens_total", **by_model
    ) == final.eval_count
    assert value(after, "llm_prompt_tokens_total", **by_model) - value(
        before, "llm_prompt_tokens_total", **by_model
    ) == final.prompt_eval_count
    ttft = "llm_time_to_first_token_seconds_count"
    assert value(after, ttft, **by_model) - value(before, ttft, **by_model) == 1


def test_embeddings_count_prompt_tokens(url: str) -> None:
    before = scrape(url)
    reply = httpx.post(f"{url}/v1/embeddings", json={"model": EMBED_MODEL, "input": "one two three"}, headers=AUTH)
    assert reply.status_code == 200
    after = scrape(url)
    by_model = {"model": EMBED_MODEL, "api": "openai"}
    assert value(after, "llm_prompt_tokens_total", **by_model) - value(
        before, "llm_prompt_tokens_total", **by_model
    ) == reply.json()["usage"]["prompt_tokens"]


def test_errors_and_unknown_routes_are_bounded_labels(url: str) -> None:
    before = scrape(url)
    assert httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": []}, headers=AUTH).status_code in (400, 404)
    assert httpx.get(f"{url}/v1/no/such/route/123", headers=AUTH).status_code == 404
    assert httpx.get(f"{url}/v1/models").status_code == 401
    after = scrape(url)
    assert value(after, "llm_requests_total", route="unmatched", status="404") - value(
        before, "llm_requests_total", route="unmatched", status="404"
    ) == 1
    assert value(after, "llm_requests_total", route="/v1/models", status="401", outcome="error") - value(
        before, "llm_requests_total", route="/v1/models", status="401"
    ) == 1
    # Paths never become label values.
    assert not any("/v1/no/such" in dict(ls).get("route", "") for _, ls in after)


def test_in_band_error_is_an_error_outcome() -> None:
    app, _ = build_fake_app(engine_config=FakeEngineConfig(fail_after_tokens=2))
    with TestClient(app) as client:
        with client.stream(
            "POST", "/v1/chat/completions",
            json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as reply:
            assert reply.status_code == 200
            body = "".join(reply.iter_text())
        assert '"error"' in body
        samples = scrape_client(client)
    assert value(samples, "llm_requests_total", route="/v1/chat/completions", status="200", outcome="error") == 1


def test_deadline_is_counted() -> None:
    app, _ = build_fake_app(
        IngressSettings(request_deadline_s=0.2), FakeEngineConfig(token_interval_s=0.1, output_tokens=50)
    )
    with TestClient(app) as client:
        reply = client.post("/v1/chat/completions", json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 504
        samples = scrape_client(client)
    labels = {"model": CHAT_MODEL, "api": "openai"}
    assert value(samples, "llm_deadline_exceeded_total", **labels, phase="before_first_byte") == 1
    assert value(samples, "llm_requests_total", **labels, status="504", outcome="deadline") == 1


def scrape_client(client: TestClient) -> Samples:
    """``/metrics`` through a TestClient (the app has no keys)."""
    reply = client.get("/metrics")
    assert reply.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def test_metrics_need_the_key_unless_open() -> None:
    app, _ = build_fake_app(IngressSettings(api_keys=[KEY]))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 200
    app, _ = build_fake_app(IngressSettings(api_keys=[KEY], metrics_open=True))
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_apps_have_their_own_registries() -> None:
    first, _ = build_fake_app()
    second, _ = build_fake_app()
    with TestClient(first) as one, TestClient(second) as two:
        assert one.get("/v1/models").status_code == 200
        assert value(scrape_client(one), "llm_requests_total", route="/v1/models") == 1
        assert value(scrape_client(two), "llm_requests_total", route="/v1/models") == 0
