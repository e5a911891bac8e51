"""`lmdeploy serve proxy` in front of three real api_servers on the default model."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .server import RunningServer, servers

KEY = "sk-proxy-test"
NODE_ARGS = ["--session-len", "512", "--max-batch-size", "8", "--num-gpu-blocks", "48"]
PROMPT = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def main_proxy():
    with servers("proxy", [["--strategy", "min_expected_latency"]], api_key=KEY) as (proxy,):
        yield proxy


@pytest.fixture(scope="module")
def nodes(main_proxy):
    """Three api_servers that register themselves with the main proxy."""
    with servers("api_server", [[*NODE_ARGS, "--proxy-url", main_proxy.url]] * 3, KEY) as started:
        wait_for(lambda: healthy_nodes(main_proxy) == {n.url for n in started})
        yield started


def wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def node_status(proxy: RunningServer) -> dict[str, dict]:
    return httpx.get(f"{proxy.url}/nodes/status", headers=proxy.headers, timeout=10).json()


def healthy_nodes(proxy: RunningServer) -> set[str]:
    return {url for url, s in node_status(proxy).items() if s["healthy"]}


def finished(node: RunningServer) -> int:
    stats = node.stats()
    return sum(stats[f"num_finished_{r}"] for r in ("stop", "length", "abort"))


def served_by(nodes: list[RunningServer], before: list[int]) -> Counter:
    return Counter({n.url: finished(n) - b for n, b in zip(nodes, before, strict=True)})


def chat(proxy: RunningServer, model: str, max_tokens: int = 2) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    return httpx.post(
        f"{proxy.url}/v1/chat/completions", json=body, headers=proxy.headers, timeout=120
    )


def stream_chat(proxy: RunningServer, model: str, max_tokens: int) -> list[str]:
    """The data lines of a streamed reply, as received."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True}
    lines = []
    with httpx.stream(
        "POST", f"{proxy.url}/v1/chat/completions", json=body, headers=proxy.headers, timeout=120
    ) as response:
        assert response.status_code == 200, response.read()
        lines += [line for line in response.iter_lines() if line.startswith("data: ")]
    return lines


def load(proxy: RunningServer, model: str, num_requests: int, concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(lambda _: chat(proxy, model), range(num_requests)))
    assert [r.status_code for r in replies] == [200] * num_requests


@pytest.fixture(scope="module")
def model(main_proxy, nodes) -> str:
    listed = httpx.get(f"{main_proxy.url}/v1/models", headers=main_proxy.headers).json()
    (card,) = listed["data"]  # three nodes, one model: the union lists it once
    return card["id"]


def strategy_proxy(strategy: str):
    """A proxy without keys of its own that reaches the keyed nodes with --node-api-key."""
    return servers("proxy", [["--strategy", strategy, "--node-api-key", KEY]])


def add_nodes(proxy: RunningServer, nodes: list[RunningServer]) -> None:
    for node in nodes:
        reply = httpx.post(f"{proxy.url}/nodes/add", json={"url": node.url}, timeout=10)
        assert reply.status_code == 200, reply.text


def test_the_openai_client_through_the_proxy(main_proxy, model):
    from openai import OpenAI

    client = OpenAI(api_key=KEY, base_url=f"{main_proxy.url}/v1")
    assert [m.id for m in client.models.list().data] == [model]
    reply = client.chat.completions.create(model=model, messages=PROMPT, max_tokens=3)
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 3
    chunks = list(
        client.chat.completions.create(model=model, messages=PROMPT, max_tokens=3, stream=True)
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = client.completions.create(model=model, prompt="Shanghai is", max_tokens=3)
    assert text.choices[0].text


def test_keys_unknown_models_and_node_errors_answer_as_openai_does(main_proxy, model):
    assert httpx.get(f"{main_proxy.url}/health").status_code == 200
    assert httpx.get(f"{main_proxy.url}/v1/models").status_code == 401
    assert httpx.get(f"{main_proxy.url}/nodes/status").status_code == 401
    missing = chat(main_proxy, "no-such-model")
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]["message"]
    invalid = httpx.post(
        f"{main_proxy.url}/v1/chat/completions",
        json={"model": model, "messages": PROMPT, "temperature": "hot"},
        headers=main_proxy.headers,
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "temperature"


@pytest.mark.parametrize("strategy", ["random", "min_expected_latency"])
def test_the_load_spreads_over_the_nodes(nodes, model, strategy):
    with strategy_proxy(strategy) as (proxy,):
        add_nodes(proxy, nodes)
        before = [finished(n) for n in nodes]
        load(proxy, model, num_requests=18, concurrency=6)
        counts = served_by(nodes, before)
    assert sum(counts.values()) == 18
    # Binomial(18, 1/3) falls under 2 with probability 0.3%; balancing makes it rarer still.
    assert min(counts.values()) >= 2, counts


def test_min_observed_latency_sends_each_request_to_the_fastest_node_so_far(nodes, model):
    with strategy_proxy("min_observed_latency") as (proxy,):
        add_nodes(proxy, nodes)
        for _ in range(6):
            status = node_status(proxy)
            means = {
                u: statistics.fmean(s["latency"]) if s["latency"] else 0.0
                for u, s in status.items()
            }
            expected = {u for u, m in means.items() if m == min(means.values())}
            before = [finished(n) for n in nodes]
            assert chat(proxy, model).status_code == 200
            (url,) = +served_by(nodes, before)
            assert url in expected, (url, means)
        assert all(len(s["latency"]) >= 1 for s in node_status(proxy).values())


def test_nodes_are_removed_and_added_at_run_time(main_proxy, nodes, model):
    first = nodes[0]
    reply = httpx.post(
        f"{main_proxy.url}/nodes/remove", params={"node_url": first.url}, headers=main_proxy.headers
    )
    assert reply.status_code == 200 and first.url not in node_status(main_proxy)
    before = [finished(n) for n in nodes]
    load(main_proxy, model, num_requests=6, concurrency=3)
    assert served_by(nodes, before)[first.url] == 0
    reply = httpx.post(
        f"{main_proxy.url}/nodes/add", json={"url": first.url}, headers=main_proxy.headers
    )
    assert reply.status_code == 200 and node_status(main_proxy)[first.url]["models"] == [model]
    assert first.url in healthy_nodes(main_proxy)


def test_a_silent_node_leaves_within_seconds_and_returns_when_it_answers(main_proxy, nodes, model):
    frozen = nodes[1]
    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: frozen.url not in healthy_nodes(main_proxy), timeout=6)
        load(main_proxy, model, num_requests=4, concurrency=2)
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    wait_for(lambda: frozen.url in healthy_nodes(main_proxy), timeout=6)


def test_a_node_killed_mid_load_loses_no_request_that_had_not_started(main_proxy, nodes, model):
    victim = nodes[2]

    def one(i: int) -> tuple[bool, list[str]]:
        if i % 2:
            return False, [json.dumps(chat(main_proxy, model, max_tokens=8).json())]
        return True, stream_chat(main_proxy, model, max_tokens=8)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(1.5)
        victim.process.send_signal(signal.SIGKILL)
        results = [f.result(timeout=120) for f in futures]
    for streamed, lines in results:
        if not streamed:
            assert '"choices"' in lines[0], lines  # retried on another node if need be
            continue
        assert lines[-1] == "data: [DONE]"
        errors = [line for line in lines if '"error"' in line]
        if errors:  # only a stream the victim had started may break, and it says so
            assert '"choices"' in lines[0] and errors == [lines[-2]], lines
    wait_for(lambda: victim.url not in healthy_nodes(main_proxy), timeout=5)
    assert victim.url in node_status(main_proxy)  # kept, to rejoin if it comes back


def test_a_node_that_shuts_down_deregisters_itself(main_proxy, nodes):
    leaving = nodes[1]
    leaving.process.terminate()
    leaving.process.wait(timeout=30)
    wait_for(lambda: leaving.url not in node_status(main_proxy), timeout=10)
