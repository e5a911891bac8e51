"""A failing forward pass on the real engine (the embedded model's runner, wrapped to raise
on chosen steps as a CUDA OOM would), seen through the HTTP app: the request of that step
gets OpenAI's 500 body (or, streamed, an error event), the engine serves the next request,
every KV block comes back and /metrics counts the failure."""

from __future__ import annotations

import json
import threading

import pytest
from dependency_injector import providers
from fastapi.testclient import TestClient

from lmdeploy import PytorchEngineConfig
from lmdeploy.adapters.http.app import create_app
from lmdeploy.infrastructure.factory import build_container
from lmdeploy.infrastructure.server import build_services


class FailingRunner:
    """The real runner, but `fail_next` steps from now raise instead of running."""

    def __init__(self, runner) -> None:
        self._runner = runner
        self.decodes_ahead = runner.decodes_ahead
        self.fail_next = 0
        self._lock = threading.Lock()

    @property
    def cache(self):
        return self._runner.cache

    def step(self, plan):
        with self._lock:
            failing, self.fail_next = self.fail_next > 0, max(0, self.fail_next - 1)
        if failing:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self._runner.step(plan)

    def idle(self):
        self._runner.idle()


@pytest.fixture(scope="module")
def served():
    container = build_container(None, PytorchEngineConfig(session_len=1024))
    wrapped = {}

    def wrap(built):
        wrapped["runner"] = FailingRunner(built.runner)
        return wrapped["runner"]

    container.runner.override(providers.Callable(wrap, container.built_model))
    container.init_resources()
    client = TestClient(create_app(build_services(container, None)))
    yield client, wrapped["runner"], container.engine()
    container.shutdown_resources()


def _idle_and_whole(engine) -> bool:
    stats = engine.stats()
    return stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks


def _step_failures(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("lmdeploy_step_failures_total "):
            return float(line.split()[1])
    raise AssertionError("lmdeploy_step_failures_total is missing from /metrics")


BODY = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}


def test_a_failed_step_is_a_500_with_openai_body_and_the_engine_goes_on(served):
    client, runner, engine = served
    before = _step_failures(client)
    runner.fail_next = 1
    r = client.post("/v1/completions", json=BODY)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "internal_error" and "illegal memory access" in error["message"]
    assert _step_failures(client) == before + 1
    assert _idle_and_whole(engine)
    ok = client.post("/v1/completions", json=BODY)
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"


def test_a_failed_step_ends_a_stream_with_an_error_event(served):
    client, runner, engine = served
    runner.fail_next = 1
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert "engine failed" in last["error"]["message"]
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "error"
    assert _idle_and_whole(engine)
