"""A schemathesis run over the server's own OpenAPI document, against the real api_server on
the default model: no request it generates (valid or deliberately invalid) may get a 5xx, an
answer the document does not describe, or end a well-formed request running beside it.

Bounded to keep it under a few minutes on two cores: a fixed number of derandomized examples
per operation, every generation capped at a few tokens and a few choices."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _bounded(case) -> None:
    """Valid or not, a generated body must not ask for minutes of generation."""
    body = case.body
    if not isinstance(body, dict):
        return
    # The field that bounds the reply is always set (each route's default is far longer).
    limit = "request_output_len" if case.path.endswith("/interactive") else "max_tokens"
    for name in (limit, "max_completion_tokens"):
        if name == limit or name in body:
            value = body.get(name)
            body[name] = min(value, 4) if type(value) is int and value > 0 else 4
    if type(body.get("n")) is int and body["n"] > 2:
        body["n"] = 2
    for name in ("prompt", "messages"):
        if isinstance(body.get(name), list) and len(body[name]) > 4:
            body[name] = body[name][:4]


class Bystander:
    """A well-formed streamed request, sent again and again while the fuzz runs."""

    def __init__(self, server) -> None:
        self.server = server
        self.finishes: list[str | None] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        body = {"prompt": "Count: one, two,", "max_tokens": 24, "temperature": 0, "stream": True}
        body["ignore_eos"] = True  # ends by length, always: anything else is harm
        with httpx.Client(base_url=self.server.url, headers=self.server.headers, timeout=60) as c:
            while not self._stop.is_set():
                finish = None
                with c.stream("POST", "/v1/completions", json=body) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            chunk = httpx.Response(200, content=line[6:]).json()
                            choices = chunk.get("choices") or [{}]
                            finish = choices[0].get("finish_reason") or finish
                self.finishes.append(finish)


@pytest.mark.slow
def test_fuzz_the_openapi_document(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=server.headers)
    failures: list[str] = []
    with Bystander(server) as bystander:
        for result in schema.get_all_operations():
            operation = result.ok()

            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy())
            def run(case) -> None:
                _bounded(case)
                case.call_and_validate(
                    base_url=server.url, headers=server.headers, checks=CHECKS, timeout=60
                )

            started = time.monotonic()
            try:
                run()
            except Exception as exc:  # collect every operation's failure, then report all
                failures.append(f"{operation.label}: {exc}")
            print(f"{operation.label}: {time.monotonic() - started:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert bystander.finishes and set(bystander.finishes) == {"length"}, bystander.finishes
    stats = server.wait_idle()
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
