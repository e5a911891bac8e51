"""A forward pass that raises (out of memory, a kernel error) fails only its step's requests:
they end with finish_reason 'error', their blocks come back, the failure is counted, and
the engine loop serves the next request."""

import logging
import time

import pytest

from lmdeploy import GenerationConfig
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.application.configs import ChatTemplateConfig
from lmdeploy.application.engine import EngineLoop
from lmdeploy.application.generation import GenerationService
from lmdeploy.application.pipeline import Pipeline
from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig

from .fakes import CharTokenizer, CountingRunner


class FailingRunner(CountingRunner):
    """Raises on the steps numbered in `fail_on` (1-based), as a CUDA OOM would."""

    def __init__(self, fail_on: set[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_on = fail_on
        self.num_steps = 0

    def step(self, plan):
        self.num_steps += 1
        if self.num_steps in self.fail_on:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().step(plan)


def _pipe(runner, max_batch_size: int) -> Pipeline:
    scheduler = Scheduler(SchedulerConfig(max_batch_size, 64, 64), BlockAllocator(32, 4))
    engine = EngineLoop(runner, scheduler)
    engine.start()
    service = GenerationService(
        engine, CharTokenizer(), builtin_template(ChatTemplateConfig("base")), session_len=64
    )
    pipe = Pipeline(service, "fake", engine.stop)
    pipe.engine = engine
    return pipe


@pytest.fixture
def serial_pipe():
    """One sequence a step: a failing step holds exactly one request."""
    pipe = _pipe(FailingRunner({3}), max_batch_size=1)
    yield pipe
    pipe.close()


def test_a_failing_step_fails_its_request_only_and_the_loop_goes_on(serial_pipe, caplog):
    config = GenerationConfig(max_new_tokens=5, ignore_eos=True)
    with caplog.at_level(logging.ERROR, logger="lmdeploy"):
        first, second = serial_pipe(["abc", "def"], gen_config=config)
    assert first.finish_reason == "error" and len(first.token_ids) == 2
    assert second.finish_reason == "length" and second.text == "ghijk"
    assert serial_pipe("abc", gen_config=config).finish_reason == "length"  # still serving
    stats = serial_pipe.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.num_step_failures == 1 and stats.num_finished_error == 1
    # one line naming the failure, no traceback (rendering one stalls the engine thread)
    failures = [r for r in caplog.records if "step over 1 sequences failed" in r.getMessage()]
    assert len(failures) == 1 and not failures[0].exc_info
    assert "out of memory" in failures[0].getMessage()


def test_every_request_of_a_failing_batched_step_ends_with_error_and_blocks_come_back():
    pipe = _pipe(FailingRunner({2}), max_batch_size=4)
    try:
        outs = pipe(["abc", "de", "f"], gen_config=GenerationConfig(max_new_tokens=4))
        assert [o.finish_reason for o in outs] == ["error"] * 3
        stats = pipe.engine.stats()
        assert stats.num_free_blocks == stats.num_blocks and stats.num_running == 0
        assert pipe("abc", gen_config=GenerationConfig(max_new_tokens=2)).text == "de"
    finally:
        pipe.close()


def test_a_failed_session_turn_does_not_park_its_blocks(serial_pipe):
    session = serial_pipe.chat("abc", gen_config=GenerationConfig(max_new_tokens=5))
    assert session.response.finish_reason == "error"
    stats = serial_pipe.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks


def test_a_failure_reported_between_steps_fails_the_engine_without_a_request():
    pipe = _pipe(CountingRunner(), max_batch_size=1)
    try:
        pipe.engine.fail("tensor-parallel rank 1 exited with code -9")
        deadline = time.monotonic() + 5
        while pipe.engine.failure is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipe.engine.failure == "tensor-parallel rank 1 exited with code -9"
        assert pipe("abc", gen_config=GenerationConfig(max_new_tokens=2)).finish_reason == "error"
    finally:
        pipe.close()
