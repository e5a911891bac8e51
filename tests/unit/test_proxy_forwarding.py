"""The proxy's forwarder and health monitor against fake nodes."""

import asyncio
import random

import pytest

from lmdeploy.application.proxy import (
    Dispatcher,
    Forwarder,
    HealthMonitor,
    NodeTable,
    NoHealthyNode,
    UpstreamError,
)

A, B = "http://a:1", "http://b:1"


class FakeResponse:
    def __init__(self, parts: list, status_code: int = 200) -> None:
        self.parts = parts  # bytes, or an exception to raise at that point
        self.status_code = status_code
        self.headers = {"content-type": "text/event-stream"}
        self.closed = False

    async def chunks(self):
        for part in self.parts:
            if isinstance(part, Exception):
                raise part
            yield part

    async def close(self) -> None:
        self.closed = True


class FakeNodes:
    """`Upstream` and `NodeProbe`: per-URL behaviour scripted by the test."""

    def __init__(self) -> None:
        self.replies: dict[str, list] = {}
        self.down: set[str] = set()
        self.opened: list[str] = []
        self.served = {A: ["m"], B: ["m"]}

    async def open(self, url, path, body, headers):
        self.opened.append(url)
        if url in self.down:
            raise UpstreamError("connection refused")
        return FakeResponse(self.replies.get(url, [b"data: 1\n\n", b"data: [DONE]\n\n"]))

    async def healthy(self, url):
        return url not in self.down

    async def models(self, url):
        return self.served[url]


def forwarder(nodes: FakeNodes, *urls: str) -> tuple[Forwarder, NodeTable]:
    table = NodeTable()
    for url in urls:
        table.add(url, ["m"])
    return Forwarder(Dispatcher(table, "random", random.Random(0)), nodes), table


async def read(fwd) -> bytes:
    return b"".join([c async for c in fwd.body()])


def test_a_node_that_fails_before_answering_is_taken_out_and_another_tried():
    nodes = FakeNodes()
    nodes.down.add(A)
    fwd_, table = forwarder(nodes, A, B)

    async def go():
        return [await read(await fwd_.forward("m", "/v1/x", b"{}", {}, True)) for _ in range(5)]

    assert asyncio.run(go()) == [b"data: 1\n\ndata: [DONE]\n\n"] * 5
    assert nodes.opened.count(A) == 1  # out after the first failure
    assert not table.get(A).healthy and table.get(A).unfinished == 0
    assert table.get(B).unfinished == 0 and len(table.get(B).latency) == 5


def test_a_non_streamed_reply_that_breaks_is_retried_whole():
    nodes = FakeNodes()
    nodes.replies[A] = [b'{"par', UpstreamError("reset")]
    nodes.replies[B] = [b'{"ok": 1}']
    table = NodeTable()
    table.add(A, ["m"])
    table.add(B, ["m"])
    table.get(B).latency.append(9.0)  # min_observed_latency tries the unmeasured A first
    fwd_ = Forwarder(Dispatcher(table, "min_observed_latency"), nodes)

    async def go():
        fwd = await fwd_.forward("m", "/v1/x", b"{}", {}, False)
        return fwd.url, await read(fwd)

    assert asyncio.run(go()) == (B, b'{"ok": 1}')
    assert nodes.opened == [A, B] and not table.get(A).healthy


def test_every_node_failing_ends_in_no_healthy_node():
    nodes = FakeNodes()
    nodes.down |= {A, B}
    fwd_, table = forwarder(nodes, A, B)
    with pytest.raises(NoHealthyNode):
        asyncio.run(fwd_.forward("m", "/v1/x", b"{}", {}, True))
    assert sorted(nodes.opened) == [A, B]


def test_a_stream_broken_mid_way_raises_and_takes_the_node_out():
    nodes = FakeNodes()
    nodes.replies[A] = [b"data: 1\n\n", UpstreamError("reset")]
    fwd_, table = forwarder(nodes, A)

    async def go():
        fwd = await fwd_.forward("m", "/v1/x", b"{}", {}, True)
        got = []
        with pytest.raises(UpstreamError):
            async for chunk in fwd.body():
                got.append(chunk)
        return got

    assert asyncio.run(go()) == [b"data: 1\n\n"]
    assert not table.get(A).healthy and table.get(A).unfinished == 0
    assert not table.get(A).latency


def test_a_client_leaving_mid_stream_releases_the_node_without_blaming_it():
    nodes = FakeNodes()
    fwd_, table = forwarder(nodes, A)

    async def go():
        fwd = await fwd_.forward("m", "/v1/x", b"{}", {}, True)
        body = fwd.body()
        await anext(body)
        await body.aclose()

    asyncio.run(go())
    assert table.get(A).healthy and table.get(A).unfinished == 0


def test_health_monitor_takes_a_silent_node_out_and_back_and_learns_its_models():
    nodes = FakeNodes()
    table = NodeTable()
    table.add(A, ["m"])
    table.add(B, [], healthy=False)  # registered before it listened
    monitor = HealthMonitor(table, nodes)

    asyncio.run(monitor.check_once())
    assert table.get(B).healthy and table.get(B).models == ["m"]
    nodes.down.add(A)
    asyncio.run(monitor.check_once())
    assert table.get(A).healthy  # one miss is tolerated
    asyncio.run(monitor.check_once())
    assert not table.get(A).healthy
    nodes.down.clear()
    nodes.served[A] = ["m", "m2"]
    asyncio.run(monitor.check_once())
    assert table.get(A).healthy and table.model_names() == ["m", "m2"]
