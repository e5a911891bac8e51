"""How token events cross from the engine thread to their readers without costing it much.

The engine thread calls each stream's sink once per token. An asyncio reader (the HTTP
server) would otherwise get one `call_soon_threadsafe` per event: a self-pipe write and an
event-loop wake-up for each of 256 streams every step, all on the engine's critical path.
`LoopMailbox` collects a loop's events and wakes it once per batch: the engine thread only
appends under a lock, and the loop hands each event to its stream's queue in one callback.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any


class LoopMailbox:
    """Events bound for the asyncio queues of one event loop, delivered in batches."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox] = (
        weakref.WeakKeyDictionary()
    )
    _registry_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self._scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopMailbox:
        with cls._registry_lock:
            box = cls._by_loop.get(loop)
            if box is None:
                box = cls._by_loop[loop] = cls(loop)
            return box

    def post(self, target: asyncio.Queue, event: Any) -> None:
        """Any thread: queue `event` for `target`; the loop wakes once for all posted so far."""
        with self._lock:
            self._pending.append((target, event))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: its readers are gone
            with self._lock:
                self._pending.clear()
                self._scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            batch, self._pending, self._scheduled = self._pending, [], False
        for target, event in batch:
            target.put_nowait(event)
