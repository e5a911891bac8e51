"""The engine behind a pipe (adapters/ipc): the real engine loop, scheduler and services over
a fake model, with the engine's host on a thread in place of its process, talking over real
`multiprocessing` pipes. Each behaviour is compared with the same engine in-process."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pipe

import pytest

from lmdeploy import GenerationConfig
from lmdeploy.adapters.ipc import wire
from lmdeploy.adapters.ipc.engine_client import RemoteEngine
from lmdeploy.adapters.ipc.engine_host import EngineHost
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.application.configs import ChatTemplateConfig
from lmdeploy.application.engine import EngineLoop
from lmdeploy.application.generation import GenerationService
from lmdeploy.application.pipeline import Pipeline
from lmdeploy.application.ports import GrammarSpec
from lmdeploy.application.response_format import CONSTRAINT, GRAMMAR
from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.errors import InvalidArgument, PromptTooLong, UnknownAdapter
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.domain.sequence import Sequence

from .fakes import CharTokenizer, CountingRunner


class PacedRunner(CountingRunner):
    """Steps that take a few milliseconds, so a reader can act between them."""

    def step(self, plan):
        time.sleep(0.005)
        return super().step(plan)


class HostThread:
    """Stands in for the engine process: the host serves on a thread of this process."""

    def __init__(self, host: EngineHost) -> None:
        self._thread = threading.Thread(target=host.serve, daemon=True)
        self._thread.start()
        self.exitcode: int | None = None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.exitcode = 0

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def terminate(self) -> None:
        pass


class Remote:
    """An engine loop served over pipes, and the front's RemoteEngine to it."""

    def __init__(self, runner: CountingRunner, grammar=None) -> None:
        scheduler = Scheduler(SchedulerConfig(4, 64, 64), BlockAllocator(32, 4, True))
        self.loop = EngineLoop(runner, scheduler)
        self.loop.start()
        commands_in, commands_out = Pipe(duplex=False)
        replies_in, self.replies_out = Pipe(duplex=False)
        self.host = EngineHost(self.loop, commands_in, self.replies_out, grammar)
        self.engine = RemoteEngine(HostThread(self.host), commands_out, replies_in)


def _pipeline(engine, on_close) -> Pipeline:
    service = GenerationService(
        engine, CharTokenizer(), builtin_template(ChatTemplateConfig("base")), session_len=64
    )
    return Pipeline(service, "fake", on_close)


@pytest.fixture
def remote() -> Iterator[Remote]:
    r = Remote(PacedRunner(num_blocks=32, block_size=4))
    yield r
    r.engine.stop()


@pytest.fixture
def pipes(remote) -> Iterator[tuple[Pipeline, Pipeline]]:
    """(over the pipe, in this process), each over its own engine and fake model."""
    local_loop = EngineLoop(
        CountingRunner(num_blocks=32, block_size=4),
        Scheduler(SchedulerConfig(4, 64, 64), BlockAllocator(32, 4, True)),
    )
    local_loop.start()
    far, near = _pipeline(remote.engine, lambda: None), _pipeline(local_loop, local_loop.stop)
    yield far, near
    near.close()


def _idle(engine) -> None:
    deadline = time.monotonic() + 5
    while True:
        s = engine.stats()
        if (s.num_running, s.num_waiting, s.num_free_blocks) == (0, 0, s.num_blocks):
            return
        assert time.monotonic() < deadline, f"the engine did not come back to idle: {s}"
        time.sleep(0.01)


def _fields(responses):
    return [(r.text, r.token_ids, r.finish_reason, r.generate_token_len) for r in responses]


def test_outputs_over_the_pipe_equal_the_in_process_engines(pipes):
    far, near = pipes
    prompts = ["abc", "hello", "xyz" * 5]
    configs = [
        GenerationConfig(max_new_tokens=4),
        GenerationConfig(max_new_tokens=9, stop_words=["st"]),  # a text stop word: an abort
        GenerationConfig(max_new_tokens=6, n=2),  # two choices: the second forks the first
    ]
    for gen in configs:
        assert _fields(far(prompts, gen_config=gen)) == _fields(near(prompts, gen_config=gen))
    cut = far(["hello"], gen_config=configs[1])[0]  # p q r s t ...: cut before "st"
    assert (cut.text, cut.finish_reason) == ("pqr", "stop")


def test_a_stream_left_early_frees_its_blocks(pipes, remote):
    far, _ = pipes
    for i, _out in enumerate(
        far.stream_infer("abc", gen_config=GenerationConfig(max_new_tokens=50))
    ):
        if i == 2:
            break
    _idle(remote.engine)
    assert remote.engine.stats().num_finished_abort == 1


def test_a_session_keeps_its_cache_between_turns_until_released(pipes, remote):
    far, near = pipes
    far_session = far.chat("abcdefgh", gen_config=GenerationConfig(max_new_tokens=3))
    near_session = near.chat("abcdefgh", gen_config=GenerationConfig(max_new_tokens=3))
    far.chat("ijkl", session=far_session, gen_config=GenerationConfig(max_new_tokens=3))
    near.chat("ijkl", session=near_session, gen_config=GenerationConfig(max_new_tokens=3))
    assert far_session.response.text == near_session.response.text
    stats, near_stats = remote.engine.stats(), near.service.engine.stats()
    # The second turn (8 + 3 + 4 tokens) computed only what the first did not: its K/V stayed
    assert stats.num_prefill_tokens == near_stats.num_prefill_tokens < 8 + 15
    assert stats.num_free_blocks < stats.num_blocks  # ... and the session still holds it
    far_session.close()
    _idle(remote.engine)


def test_stats_and_ttft_come_from_the_engine(pipes, remote):
    far, _ = pipes
    far(["abc", "def"], gen_config=GenerationConfig(max_new_tokens=2))
    stats = remote.engine.stats()
    assert stats == remote.loop.stats()
    assert remote.engine.ttft.snapshot().count == 2


def test_a_lost_engine_fails_what_runs_and_everything_after(pipes, remote):
    far, _ = pipes
    stream = far.stream_infer("abc", gen_config=GenerationConfig(max_new_tokens=60))
    first = next(stream)
    assert first.finish_reason is None
    remote.host.engine.after_iteration = None  # the host stops sending, then its pipe closes
    remote.replies_out.close()
    last = list(stream)[-1]
    assert last.finish_reason == "error"
    assert remote.engine.failure and "engine process exited" in remote.engine.failure
    after = far("abc", gen_config=GenerationConfig(max_new_tokens=2))
    assert after.finish_reason == "error"
    assert remote.engine.stats().num_blocks == 32  # the last reading, not a hang


class _CompilingBackend:
    def __init__(self) -> None:
        self.compiled: list[tuple[GrammarSpec, frozenset[int]]] = []

    def constraint(self, spec, stop_token_ids):
        self.compiled.append((spec, stop_token_ids))
        return lambda: spec  # unpicklable, like a compiled grammar


def test_a_constrained_sequence_crosses_as_its_grammar_and_compiles_on_the_engine_side():
    spec, stop = GrammarSpec("regex", "[a-c]+"), frozenset({0})
    front = _CompilingBackend()
    sampling = SamplingParams(
        max_new_tokens=4, extra={CONSTRAINT: front.constraint(spec, stop), GRAMMAR: (spec, stop)}
    )
    seq = Sequence([1, 2, 3], sampling, max_len=64, eos_token_ids=frozenset({0}))
    crossed = pickle.loads(pickle.dumps(wire.SequenceSpec.of(seq)))
    engine_side = _CompilingBackend()
    built = crossed.build(engine_side, None)
    assert built.seq_id == seq.seq_id and built.prompt_token_ids == [1, 2, 3]
    assert engine_side.compiled == [(spec, stop)]
    assert built.sampling.extra[CONSTRAINT]() == spec
    assert built.sampling.extra[CONSTRAINT] is not seq.sampling.extra[CONSTRAINT]


@pytest.mark.parametrize(
    "error",
    [
        InvalidArgument("quant_policy", "must be 0, 4 or 8"),
        PromptTooLong(70, 64),
        UnknownAdapter("x", ("a",)),
    ],
)
def test_argument_errors_cross_a_process_boundary_with_their_type(error):
    crossed = pickle.loads(pickle.dumps(error))
    assert type(crossed) is type(error) and str(crossed) == str(error)
    assert crossed.argument == error.argument and isinstance(crossed, ValueError)
