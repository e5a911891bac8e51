"""Hostile requests against the real server: each is a 400 with OpenAI's error body naming the
field, and none disturbs a well-formed request running beside it or /health."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def _stream_finish(server, results: list) -> None:
    body = {"prompt": "Count: one, two,", "max_tokens": 24, "temperature": 0, "stream": True}
    body["ignore_eos"] = True
    finish = None
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=120
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                finish = json.loads(line[6:])["choices"][0]["finish_reason"] or finish
    results.append(finish)


def _post(server, path: str, body: dict | str) -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)  # escapes lone surrogates
    headers = {**server.headers, "Content-Type": "application/json"}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=120)


HOSTILE = [
    ("/v1/completions", {"prompt": [999999], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [-1], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 2, "seed": 1 << 63}, "seed"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 2, "top_k": 1 << 63}, "top_k"),
    ("/v1/completions", {"prompt": "a\ud800b", "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 2, "stop": ["x\ud800"]}, "stop"),
    (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "a\ud800b"}], "max_tokens": 2},
        "messages",
    ),
    ("/v1/chat/completions", {"messages": "hi", "stop": "\udc00", "max_tokens": 2}, "stop"),
    ("/v1/chat/interactive", {"prompt": "a\ud800b", "request_output_len": 2}, "messages"),
]


def test_hostile_values_are_400s_and_a_running_request_is_untouched(server):
    results: list = []
    bystander = threading.Thread(target=_stream_finish, args=(server, results))
    bystander.start()
    time.sleep(0.3)  # let it reach the engine
    answers = [(_post(server, path, body), param) for path, body, param in HOSTILE]
    bystander.join(timeout=120)
    for r, param in answers:
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"].startswith(param)
    assert results == ["length"]  # not 'abort', not 'error'


def test_health_answers_while_a_huge_stop_list_and_prompt_arrive(server):
    hostile = {"prompt": "word " * 200_000, "max_tokens": 2, "stop": ["x"] * 100_000}
    huge_prompt = {"prompt": "word " * 200_000, "max_tokens": 2}
    answers: list = []
    threads = [
        threading.Thread(target=lambda b=b: answers.append(_post(server, "/v1/completions", b)))
        for b in (hostile, huge_prompt)
    ]
    for t in threads:
        t.start()
    slowest = 0.0
    while any(t.is_alive() for t in threads):
        started = time.monotonic()
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    assert slowest < 1.0
    assert sorted(a.status_code for a in answers) == [400, 400]  # too many stops; too long


def test_encode_refuses_a_lone_surrogate_and_a_non_bool(server):
    r = _post(server, "/v1/encode", {"input": "a\ud800b"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = _post(server, "/v1/encode", {"input": "a", "add_bos": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "add_bos"
