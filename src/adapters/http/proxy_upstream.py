"""The proxy's one pooled httpx client: forwards requests to nodes and probes their health."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx

from ...application.proxy import UpstreamError

PROBE_TIMEOUT_S = 1.0


def make_client(read_timeout_s: float = 600.0) -> httpx.AsyncClient:
    """Connections are pooled and kept alive across requests. The read timeout bounds the
    wait for each chunk (a non-streamed reply arrives in one piece after the whole generation)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=5.0, read=read_timeout_s, write=30.0, pool=30.0),
        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
    )


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class _Response:
    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status_code = response.status_code
        self.headers = response.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """`Upstream` and `NodeProbe` over httpx. `node_api_key`, when set, replaces the client's
    key on the way to the nodes; `probe_key` lists a node's models."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        node_api_key: str | None = None,
        probe_key: str | None = None,
    ) -> None:
        self.client = client
        self.node_api_key = node_api_key
        self.probe_key = node_api_key or probe_key

    async def open(self, url: str, path: str, body: bytes, headers: Mapping[str, str]) -> _Response:
        outgoing = {"Content-Type": "application/json", **headers, **bearer(self.node_api_key)}
        request = self.client.build_request("POST", url + path, content=body, headers=outgoing)
        try:
            return _Response(await self.client.send(request, stream=True))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc

    async def healthy(self, url: str) -> bool:
        try:
            response = await self.client.get(f"{url}/health", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def models(self, url: str) -> list[str]:
        response = await self.client.get(
            f"{url}/v1/models", headers=bearer(self.probe_key), timeout=5.0
        )
        response.raise_for_status()
        return [card["id"] for card in response.json()["data"]]
