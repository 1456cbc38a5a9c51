"""Property-based fuzzing of every operation in the app's own OpenAPI document: no 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import content_type_conformance

from tests.conftest import build_fake_app

app, _ = build_fake_app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: schemathesis.Case) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    # Every error is in its API's JSON shape, never FastAPI's 422.
    assert response.status_code != 422, response.text
    if response.status_code >= 400 and case.method != "HEAD":
        assert "error" in response.json(), response.text
    case.validate_response(response, checks=(content_type_conformance,))


def test_openapi_operation_ids_are_unique() -> None:
    document = app.openapi()
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    # The fuzzing above covers every format's routes: each is in the document.
    assert {"/api/blobs/{digest}", "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"} <= set(document["paths"])
