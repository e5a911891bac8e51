"""The api_server's OpenAPI document and its behaviour agree: what the document calls invalid
is a 400 with OpenAI's error body, and the document names every status the server answers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lmdeploy.adapters.http.app import create_app
from lmdeploy.adapters.http.services import ServerServices

from .test_metrics import stats


@pytest.fixture(scope="module")
def client() -> TestClient:
    # No generation service: every request here must be refused before it needs one.
    return TestClient(create_app(ServerServices(None, None, stats, "m", ("k",), None)))


HEADERS = {"Authorization": "Bearer k"}


def test_405_names_the_allowed_methods(client):
    r = client.get("/v1/completions", headers=HEADERS)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_the_document_says_400_401_404_and_the_streamed_media_types(client):
    doc = client.get("/openapi.json", headers=HEADERS).json()
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat and {"400", "401", "404", "500"} <= set(chat)
    assert "text/event-stream" in chat["200"]["content"]
    error = doc["components"]["schemas"]["ErrorResponse"]
    assert chat["400"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert error["required"] == ["error"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]
    interactive = doc["paths"]["/v1/chat/interactive"]["post"]["responses"]
    assert "application/x-ndjson" in interactive["200"]["content"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "a", "seed": False}, "seed"),
        ({"prompt": "a", "n": 1.0}, "n"),
        ({"prompt": "a", "stream": "yes"}, "stream"),
        ({"prompt": "a", "seed": 1 << 63}, "seed"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "top_k": 1 << 63}, "top_k"),
        ({"prompt": "a", "max_tokens": 1 << 64}, "max_tokens"),
        ({"prompt": "a", "min_tokens": 1 << 40}, "min_tokens"),
        ({"prompt": "a", "logprobs": 21}, "logprobs"),
        ({"prompt": "a", "stop": ["x"] * 100_000}, "stop"),
        ({"prompt": "a", "stop": "x" * 10_000}, "stop"),
        ({"prompt": "a", "logit_bias": {str(i): 1 for i in range(1000)}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {str(1 << 40): 1}}, "logit_bias"),
        ({"prompt": [1, -1]}, "prompt"),
        ({"prompt": ["a"] * 10_000}, "prompt"),
        ({"prompt": "a", "session_id": 1 << 63}, "session_id"),
    ],
)
def test_completions_refuse_what_the_document_calls_invalid(client, body, param):
    r = client.post("/v1/completions", json=body, headers=HEADERS)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "a"}] * 5000}, "messages"),
        ({"messages": "a", "tools": [{"function": {"name": "f"}}] * 200}, "tools"),
        ({"messages": "a", "top_logprobs": 1.0}, "top_logprobs"),
        ({"messages": "a", "logprobs": 1}, "logprobs"),
    ],
)
def test_chat_refuses_what_the_document_calls_invalid(client, body, param):
    r = client.post("/v1/chat/completions", json=body, headers=HEADERS)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].split(".")[0] == param


def test_interactive_bounds_its_integers(client):
    body = {"prompt": "a", "session_id": 1 << 64, "top_k": 1 << 63}
    r = client.post("/v1/chat/interactive", json=body, headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["param"] in ("session_id", "top_k")


def test_health_is_503_with_the_reason_once_the_engine_failed():
    reason = "tensor-parallel rank 1 (pid 7) exited with code -9"
    failed = ServerServices(None, None, stats, "m", (), None, failure=lambda: reason)
    r = TestClient(create_app(failed)).get("/health")
    assert r.status_code == 503 and r.json() == {"status": "unhealthy", "error": reason}
    healthy = TestClient(create_app(ServerServices(None, None, stats, "m")))
    assert healthy.get("/health").json() == {"status": "ok"}
