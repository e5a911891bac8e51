"""The engine keeps the collector off the objects alive at its start (imports, model, tokenizer)
and hands them back when it stops."""

from __future__ import annotations

import gc
import weakref

from lmdeploy.application.engine import EngineLoop

from .fakes import CountingRunner, build_scheduler


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_objects_alive_at_start_are_frozen_until_stop_and_dead_cycles_are_not():
    gc.unfreeze()
    survivor = _Node()
    dead = _Node()
    dead_ref = weakref.ref(dead)
    del dead  # cyclic garbage before the start: collected then, not frozen for good
    engine = EngineLoop(CountingRunner(), build_scheduler(8, 4))
    engine.start()
    try:
        assert dead_ref() is None
        assert gc.get_freeze_count() > 0
        assert all(o is not survivor for o in gc.get_objects())  # out of the collector's sight
    finally:
        engine.stop()
    assert gc.get_freeze_count() == 0
    assert any(o is survivor for o in gc.get_objects())
