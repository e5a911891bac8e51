"""A request body that is not JSON is a 400 saying so, and where, in OpenAI's error body."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from lmdeploy.adapters.http.app import create_app
from lmdeploy.adapters.http.services import ServerServices


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_body_that_is_not_json_is_400_saying_where(path):
    client = TestClient(create_app(ServerServices(None, None, lambda: None, "m")))
    body = '{"model": "m", "messages": ['
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["message"].startswith("the request body is not valid JSON")
    assert f"at character {len(body)}" in error["message"]
