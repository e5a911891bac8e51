"""Poll every node's health; learn a node's models once it answers."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from .nodes import NodeTable

logger = logging.getLogger("lmdeploy.proxy")


class NodeProbe(Protocol):
    async def healthy(self, url: str) -> bool: ...

    async def models(self, url: str) -> list[str]: ...


class HealthMonitor:
    def __init__(self, table: NodeTable, probe: NodeProbe, interval: float = 1.0) -> None:
        self.table = table
        self.probe = probe
        self.interval = interval

    async def check_once(self) -> None:
        urls = [url for url, _ in self.table.items()]
        results = await asyncio.gather(*(self.probe.healthy(url) for url in urls))
        for url, ok in zip(urls, results, strict=True):
            was_healthy = getattr(self.table.get(url), "healthy", False)
            came_back = self.table.record_probe(url, ok)
            status = self.table.get(url)
            if status is None:
                continue
            if came_back or (ok and not status.models):
                await self.refresh_models(url)
            if came_back:
                logger.warning("node %s answers again: back in service", url)
            elif was_healthy and not status.healthy:
                logger.warning("node %s does not answer: out of service", url)

    async def refresh_models(self, url: str) -> None:
        try:
            models = await self.probe.models(url)
        except Exception as exc:  # noqa: BLE001 - the next probe retries; log and carry on
            logger.warning("could not list the models of node %s: %s", url, exc)
            return
        status = self.table.get(url)
        if status is not None and models:
            status.models = models

    async def run(self) -> None:
        """Probe every `interval` seconds until cancelled."""
        while True:
            await self.check_once()
            await asyncio.sleep(self.interval)
