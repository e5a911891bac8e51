"""The proxy forwards whole SSE events and ends a broken stream with an error event."""

import asyncio
import json

from lmdeploy.adapters.http.proxy_app import _events
from lmdeploy.application.proxy import Forwarded, UpstreamError


def forwarded(parts: list) -> Forwarded:
    async def rest():
        for part in parts:
            if isinstance(part, Exception):
                raise part
            yield part

    async def finish(outcome: str) -> None:
        pass

    return Forwarded("http://a:1", 200, {}, b"", rest(), finish)


async def collect(fwd: Forwarded) -> list[bytes]:
    return [chunk async for chunk in _events(fwd)]


def test_events_split_across_chunks_are_forwarded_whole():
    got = asyncio.run(collect(forwarded([b"data: 1\n\ndata: ", b"2\n\n", b"data: [DONE]\n\n"])))
    assert got == [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]


def test_a_broken_stream_drops_the_half_event_and_ends_with_an_error_and_done():
    got = asyncio.run(collect(forwarded([b'data: 1\n\ndata: {"par', UpstreamError("reset")])))
    assert got[0] == b"data: 1\n\n"
    error, done = got[1].decode().split("\n\n")[:2]
    assert json.loads(error.removeprefix("data: "))["error"]["code"] == "upstream_disconnected"
    assert done == "data: [DONE]" and len(got) == 2
