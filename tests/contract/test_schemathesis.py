"""Schemathesis over every operation of the app's own OpenAPI document, on the fake engine.

The CLI runs its coverage phase (boundary values and every documented status, schema-valid
and schema-violating alike) and its fuzzing phase, with every check: no server error, no
undocumented status, header or content type, responses valid against their schemas, no
schema-valid request refused, no schema-violating one accepted, no route open without the key.
The seed is fixed so CI is repeatable; ``SCHEMATHESIS_SEED`` and ``SCHEMATHESIS_EXAMPLES``
change it and the depth for a longer hunt. The real-engine run is in tests/e2e.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from serve_app.core.internal_types import ModelCard
from serve_app.settings import IngressSettings
from tests.conftest import build_fake_app, fake_cards
from tests.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
KEY = "schemathesis-key"
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "40"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20261202")
MODELS = {"generate": "omni:1", "vision": "omni:1", "embed": "all-minilm:l6-v2"}


def schemathesis_cards() -> list[ModelCard]:
    """One generation model that can do everything a body may ask (so a schema-valid case is
    never refused for a capability the model lacks) and the usual embedding model."""
    omni = ModelCard(name="omni:1", context_length=4096,
                     capabilities=["completion", "tools", "thinking", "insert", "vision"], family="llama")
    return [omni, *(card for card in fake_cards() if card.kind == "embed")]


def run_schemathesis(url: str, models: dict[str, str], *, key: str | None, examples: int, seed: str,
                     workers: int = 2, request_timeout_s: int = 30,
                     extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``st run`` against ``url`` with every phase but stateful and every check."""
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{url}/openapi.json",
        "--phases=coverage,fuzzing", "--mode=all", "--checks=all",
        f"--max-examples={examples}", f"--seed={seed}", f"--workers={workers}",
        f"--request-timeout={request_timeout_s}", "--max-failures=50", "--no-color",
        # No example database: a run replays nothing from an earlier one, so the seed alone
        # decides what CI sends (and nothing is written into the checkout).
        "--generation-database=none",
        # Schema-violating cases are still sent and must never get a 5xx or an undocumented
        # status; that the server refuses every one of them is not asked (pydantic's lax mode
        # takes `false` for 0 and "1" for 1, as OpenAI's own API does).
        *(("--exclude-checks=negative_data_rejection",) if not any(e.startswith("--exclude-checks") for e in extra) else ()),
        *extra,
    ]
    if key is not None:
        command += ["-H", f"Authorization: Bearer {key}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.schemathesis_hooks",
           "SCHEMATHESIS_MODELS": json.dumps(models), "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1500, check=False)


# A crash inside schemathesis' own data generation (Python's compiler refusing code Hypothesis
# builds for a deep schema) is reported as an error of the run, not as a finding about the API.
GENERATOR_CRASH = "AST constructor recursion depth mismatch"


def assert_clean(result: subprocess.CompletedProcess[str]) -> tuple[str, int]:
    """The run found nothing and did run; its output and how many cases it generated."""
    output = result.stdout + result.stderr
    summary = output[output.rfind("SUMMARY"):]
    assert "Failures:" not in summary, output[-30000:]
    errors = re.findall(r"🚫 (.+?): (\d+)", summary)
    crashes = output.count(GENERATOR_CRASH)
    assert all(kind.strip() == "Runtime Error" for kind, _ in errors), output[-30000:]
    assert sum(int(count) for _, count in errors) <= crashes, output[-30000:]
    assert result.returncode == 0 or errors, output[-30000:]
    generated = re.search(r"(\d+) generated", summary)
    assert generated is not None, summary
    return output, int(generated.group(1))


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake app with a key configured (so 401s are real) and its store migrated."""
    database = tmp_path_factory.mktemp("schemathesis") / "state"
    settings = IngressSettings(api_keys=[KEY], state={"data_dir": str(database.parent)})
    app, _ = build_fake_app(settings, cards=schemathesis_cards())
    with serve_in_thread(app, lifespan="on") as url:
        yield url


def test_schemathesis_finds_nothing_on_any_route(keyed_url: str) -> None:
    output, cases = assert_clean(run_schemathesis(keyed_url, MODELS, key=KEY, examples=EXAMPLES, seed=SEED))
    tested = re.search(r"Tested: (\d+)", output)
    # Every operation of the document was tested, with enough cases to matter.
    assert tested is not None and int(tested.group(1)) >= 60, output[-3000:]
    assert cases > 5000, cases
    print(f"schemathesis: {tested.group(1)} operations, {cases} cases")


def test_openapi_operation_ids_are_unique() -> None:
    app, _ = build_fake_app()
    document = app.openapi()
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # The fuzzing above covers every format's routes: each is in the document.
    assert {"/api/blobs/{digest}", "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"} <= set(document["paths"])


def test_the_document_states_errors_and_limits_as_served() -> None:
    # Without keys the document has no security and no 401 (every route is open).
    open_document = build_fake_app()[0].openapi()
    assert "security" not in open_document
    assert "401" not in open_document["paths"]["/v1/chat/completions"]["post"]["responses"]
    settings = IngressSettings(api_keys=["k"], limits={"max_n": 3, "max_stop_sequences": 2, "max_embedding_inputs": 5})
    document = build_fake_app(settings)[0].openapi()
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and {"200", "400", "401", "404", "413", "429", "500", "503", "504"} <= set(chat)
    assert chat["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OpenAIError"}
    assert "Retry-After" in chat["429"]["headers"] and "Retry-After" in chat["503"]["headers"]
    assert "text/event-stream" in chat["200"]["content"]
    ollama = document["paths"]["/api/chat"]["post"]["responses"]
    assert ollama["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OllamaError"}
    assert "application/x-ndjson" in ollama["200"]["content"]
    anthropic = document["paths"]["/v1/messages"]["post"]["responses"]
    assert anthropic["529"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AnthropicError"}
    assert document["paths"]["/api/pull"]["post"]["responses"]["403"]["content"]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert {"bearer", "apiKey"} == set(document["components"]["securitySchemes"])
    schemas = document["components"]["schemas"]
    n = schemas["ChatCompletionRequest"]["properties"]["n"]["anyOf"][0]
    assert n["maximum"] == 3
    stop = [m for m in schemas["ChatCompletionRequest"]["properties"]["stop"]["anyOf"] if m.get("type") == "array"]
    assert stop[0]["maxItems"] == 2
    # Lists of inputs are capped; one input given as a list of token ids is not a list of inputs.
    members = schemas["EmbeddingsRequest"]["properties"]["input"]["anyOf"]
    batches = [m for m in members if m.get("type") == "array" and m["items"].get("type") in ("string", "array")]
    assert len(batches) == 2 and {m["maxItems"] for m in batches} == {5}
    for name in ("HTTPValidationError", "ValidationError"):
        assert name not in schemas




# Bodies the routes refuse for a relation between fields, each beside its accepted twin: the
# document's schema must refuse and accept the same ones (so a client generated from it, or
# schemathesis, learns the rule without a 400).
CROSS_FIELD_CASES = [
    ("/v1/completions", "CompletionRequest", {"prompt": [1, 2, 3], "echo": True}, {"prompt": "hi", "echo": True}),
    ("/v1/completions", "CompletionRequest", {"prompt": [[1, 2]], "echo": True}, {"prompt": [[1, 2]], "echo": False}),
    ("/v1/completions", "CompletionRequest", {"prompt": "hi", "stream_options": {"include_usage": True}},
     {"prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", "ChatCompletionRequest",
     {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2, "logprobs": True}),
    ("/v1/chat/completions", "ChatCompletionRequest",
     {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"},
     {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "none"}),
]


@pytest.mark.parametrize(("path", "schema_name", "refused", "accepted"), CROSS_FIELD_CASES)
def test_cross_field_rules_in_the_document_match_the_routes(
    client: TestClient, path: str, schema_name: str, refused: dict[str, Any], accepted: dict[str, Any]
) -> None:
    document = client.app.openapi()  # type: ignore[attr-defined]
    validator = Draft202012Validator({"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]})
    for body, valid in ((refused, False), (accepted, True)):
        body = {"model": "smollm2:135m", "max_tokens": 2, **body}
        assert validator.is_valid(body) is valid, body
        status = client.post(path, json=body).status_code
        assert (status == 200) is valid, (body, status)
