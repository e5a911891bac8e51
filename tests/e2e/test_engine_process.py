"""The api_server's engine in its own process: a server whose engine process is killed while
a request streams ends that request with an error, refuses later ones with 500, and turns
/health to 503 within seconds, instead of hanging."""

from __future__ import annotations

import json
import time

import httpx
import psutil
import pytest

from .server import api_server


def _engine_process(server) -> psutil.Process:
    (engine,) = [
        child
        for child in psutil.Process(server.process.pid).children()
        if "spawn_main" in " ".join(child.cmdline())
    ]
    return engine


@pytest.mark.timeout(240)
def test_a_killed_engine_process_fails_the_stream_and_the_health_check():
    with api_server("--session-len", "1024", "--cache-max-entry-count", "0.05") as server:
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
        body = {
            "model": "SmolLM2-135M-Instruct",
            "messages": [{"role": "user", "content": "Count from one to a thousand."}],
            "max_tokens": 900,
            "ignore_eos": True,
            "stream": True,
        }
        events = []
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=body, timeout=60
        ) as response:
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
                    break
            _engine_process(server).kill()
            started = time.monotonic()
            for line in lines:
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
        assert time.monotonic() - started < 10
        finishes = [c["finish_reason"] for e in events for c in e.get("choices", [])]
        assert finishes[-1] == "error"
        assert "engine process exited" in events[-1]["error"]["message"]
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 503
        later = httpx.post(
            f"{server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=30
        )
        assert later.status_code == 500
        assert "engine process exited" in later.json()["error"]["message"]
        assert server.process.poll() is None  # the front still answers
