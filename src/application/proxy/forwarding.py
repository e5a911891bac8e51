"""Forward one request to a node, retrying on another node while nothing has reached the
client yet, and keep each node's in-flight count and latency window."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .dispatch import Dispatcher
from .nodes import NodeTable

logger = logging.getLogger("lmdeploy.proxy")


class UpstreamError(Exception):
    """The node could not be reached, or the connection broke, or it timed out."""


class UpstreamResponse(Protocol):
    status_code: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises UpstreamError when the transfer breaks."""
        ...

    async def close(self) -> None: ...


class Upstream(Protocol):
    async def open(
        self, url: str, path: str, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers arrived."""
        ...


@dataclass
class Forwarded:
    """A node's response, whose first bytes (the whole body when not streamed) are in hand."""

    url: str
    status_code: int
    headers: Mapping[str, str]
    head: bytes
    _rest: AsyncIterator[bytes] | None = field(repr=False)
    _finish: Callable[[str], Awaitable[None]] = field(repr=False)

    async def body(self) -> AsyncIterator[bytes]:
        """The whole body; raises UpstreamError if the node breaks off mid-stream (and takes
        the node out). Closing the iterator early (a client that went away) ends the
        bookkeeping without blaming the node."""
        outcome = "gone"
        try:
            if self.head:
                yield self.head
            if self._rest is not None:
                async for chunk in self._rest:
                    yield chunk
            outcome = "done"
        except UpstreamError:
            outcome = "broken"
            raise
        finally:
            await self._finish(outcome)


class Forwarder:
    def __init__(self, dispatcher: Dispatcher, upstream: Upstream) -> None:
        self.dispatcher = dispatcher
        self.upstream = upstream

    async def forward(
        self, model: str, path: str, body: bytes, headers: Mapping[str, str], stream: bool
    ) -> Forwarded:
        """Send to a node chosen for `model`. A node that fails before its first body bytes
        (any time before the end when not streamed) is taken out and the next one tried;
        raises UnknownModel, or NoHealthyNode once every healthy node was tried."""
        table = self.dispatcher.table
        tried: list[str] = []
        while True:
            url = self.dispatcher.choose(model, exclude=tried)
            tried.append(url)
            start = table.begin(url)
            response: UpstreamResponse | None = None
            try:
                response = await self.upstream.open(url, path, body, headers)
                chunks = response.chunks()
                if stream:
                    head = await anext(chunks, b"")
                    rest: AsyncIterator[bytes] | None = chunks
                else:
                    head, rest = b"".join([c async for c in chunks]), None
            except UpstreamError as exc:
                logger.warning("node %s failed before answering (%s); trying another", url, exc)
                table.finish(url, start, ok=False)
                table.mark_failed(url)
                if response is not None:
                    await response.close()
                continue
            return Forwarded(
                url,
                response.status_code,
                response.headers,
                head,
                rest,
                _finisher(table, url, start, response),
            )


def _finisher(
    table: NodeTable, url: str, start: float, response: UpstreamResponse
) -> Callable[[str], Awaitable[None]]:
    async def finish(outcome: str) -> None:
        await response.close()
        table.finish(url, start, ok=outcome == "done")
        if outcome == "broken":
            logger.warning("node %s broke off a streamed response", url)
            table.mark_failed(url)

    return finish

    return finish
