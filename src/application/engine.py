"""The engine loop: one thread that schedules, runs a step and reports tokens, forever.

Callers never touch the scheduler: they post commands to an inbox and receive `TokenEvent`s
through the sink they passed in. One forward pass per iteration; the runner returns the
sampled ids, which is the step's one device-to-host sync.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..domain.errors import EngineFailed
from ..domain.sampling_params import SamplingParams
from ..domain.scheduler import Scheduler, StepPlan
from ..domain.sequence import FinishReason, ImageSpan, Sequence
from .latency import HistogramSnapshot, LatencyHistogram
from .ports import ModelRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """A token appended to `seq`, or the end of `seq` (token_id None when it ended without one)."""

    seq: Sequence
    token_id: int | None
    logprobs: dict[int, float] | None = None
    finished: bool = False
    error: str | None = None
    extras: dict | None = None  # see StepOutput.extras; also sent for prefill chunks


Sink = Callable[[TokenEvent], None]


@dataclass(frozen=True)
class EngineStats:
    num_blocks: int
    num_free_blocks: int
    num_running: int
    num_waiting: int
    num_preemptions: int
    num_prefill_tokens: int
    num_decode_tokens: int
    num_prefix_hit_tokens: int
    num_session_evictions: int
    num_steps: int
    num_cpu_blocks: int = 0
    num_free_cpu_blocks: int = 0
    num_swapped: int = 0
    num_recompute_preemptions: int = 0
    num_swapped_out_seqs: int = 0
    num_swapped_in_seqs: int = 0
    num_swapped_out_blocks: int = 0
    num_swapped_in_blocks: int = 0
    num_finished_stop: int = 0
    num_finished_length: int = 0
    num_finished_abort: int = 0
    num_finished_error: int = 0
    num_step_failures: int = 0


class Latencies(Protocol):
    def snapshot(self) -> HistogramSnapshot: ...


class Engine(Protocol):
    """What the services ask of an engine: `EngineLoop` in this process, or a loop in a
    process of its own behind a pipe (adapters/ipc). Sinks are called on a thread of the
    engine's choosing, never the caller's event loop."""

    # Why the engine cannot run anymore (None while it can): /health answers 503.
    failure: str | None
    ttft: Latencies  # seconds from admission to a turn's first token

    def submit(self, seq: Sequence, sink: Sink) -> None: ...

    def resume(
        self,
        seq: Sequence,
        token_ids: list[int],
        sampling: SamplingParams,
        sink: Sink,
        images: tuple[ImageSpan, ...] = (),
    ) -> None: ...

    def abort(self, seq: Sequence) -> None: ...

    def release(self, seq: Sequence) -> None: ...

    def stats(self) -> EngineStats: ...


def _freeze_startup_objects() -> None:
    """Move every object alive now (the imported modules of torch, transformers and triton, the
    model, the tokenizer: millions of them) out of the collector's sight. A full collection
    otherwise walks them all, and on an H200 one did so in the middle of a 256-row decode run
    for 185 ms, stalling every request (benchmark/NOTES.md). Garbage is collected first so no
    dead cycle is frozen; `stop` unfreezes."""
    gc.collect()
    gc.freeze()


class EngineLoop:
    def __init__(self, runner: ModelRunner, scheduler: Scheduler) -> None:
        self.runner = runner
        self.scheduler = scheduler
        self._inbox: queue.SimpleQueue[tuple[str, Sequence | None, Sink | None, object]] = (
            queue.SimpleQueue()
        )
        self._sinks: dict[int, Sink] = {}
        self.ttft = LatencyHistogram()  # seconds from admission to a turn's first token
        self._admitted_at: dict[int, float] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: str | None = None  # why the engine cannot run anymore, once it cannot
        # Called on the engine thread after each pass over the inbox and the step: the moment
        # a caller that batches the sinks' events (another process's front) sends them on.
        self.after_iteration: Callable[[], None] | None = None

    # -- called from any thread ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            _freeze_startup_objects()
            self._thread = threading.Thread(target=self._run, name="lmdeploy-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(("wake", None, None, None))
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
            # What this engine held may now be cyclic garbage: let the collector see it again.
            gc.unfreeze()

    def submit(self, seq: Sequence, sink: Sink) -> None:
        if self._stopping.is_set():
            raise RuntimeError("the engine is closed; create a new pipeline")
        if self.failure is not None:  # ends at once, as the requests in flight did
            seq.finish(FinishReason.ERROR)
            sink(TokenEvent(seq, None, finished=True, error=self.failure))
            return
        self._inbox.put(("add", seq, sink, None))

    def resume(
        self,
        seq: Sequence,
        token_ids: list[int],
        sampling: SamplingParams,
        sink: Sink,
        images: tuple[ImageSpan, ...] = (),
    ) -> None:
        """Run a new turn of a parked session over `token_ids` (with `images`, their
        embeddings filled in), reusing its cached prefix."""
        if self._stopping.is_set():
            raise RuntimeError("the engine is closed; create a new pipeline")
        self._inbox.put(("resume", seq, sink, (token_ids, sampling, images)))

    def abort(self, seq: Sequence) -> None:
        self._inbox.put(("abort", seq, None, None))

    def release(self, seq: Sequence) -> None:
        """End a session: free the blocks it parked."""
        self._inbox.put(("release", seq, None, None))

    def fail(self, reason: str) -> None:
        """The runner found out, between steps, that it can never step again (a rank died
        while the engine idled): fail as a step would, without waiting for a request."""
        self._inbox.put(("fail", None, None, reason))

    def stats(self) -> EngineStats:
        s, c = self.scheduler, self.scheduler.counters
        return EngineStats(
            num_blocks=s.allocator.num_blocks,
            num_free_blocks=s.allocator.num_free_blocks,
            num_running=len(s.running),
            num_waiting=len(s.waiting),
            num_preemptions=s.counters.preemptions,
            num_prefill_tokens=s.counters.prefill_tokens,
            num_decode_tokens=s.counters.decode_tokens,
            num_prefix_hit_tokens=s.allocator.counters.prefix_hit_tokens,
            num_session_evictions=s.counters.session_evictions,
            num_steps=s.counters.steps,
            num_cpu_blocks=s.host.num_blocks if s.host else 0,
            num_free_cpu_blocks=s.host.num_free_blocks if s.host else 0,
            num_swapped=len(s.swapped),
            num_recompute_preemptions=c.recompute_preemptions,
            num_swapped_out_seqs=c.swapped_out_seqs,
            num_swapped_in_seqs=c.swapped_in_seqs,
            num_swapped_out_blocks=c.swapped_out_blocks,
            num_swapped_in_blocks=c.swapped_in_blocks,
            num_finished_stop=c.finished.get(FinishReason.STOP.value, 0),
            num_finished_length=c.finished.get(FinishReason.LENGTH.value, 0),
            num_finished_abort=c.finished.get(FinishReason.ABORT.value, 0),
            num_finished_error=c.finished.get(FinishReason.ERROR.value, 0),
            num_step_failures=c.step_failures,
        )

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        stepped = False
        while not self._stopping.is_set():
            if stepped and not self.scheduler.has_work:
                self.runner.idle()
                stepped = False
            self._drain_inbox(block=not self.scheduler.has_work)
            if self.scheduler.has_work:
                self._step()
                stepped = True
            if self.after_iteration is not None:
                self.after_iteration()
        self._abort_everything("the engine was closed")
        if self.after_iteration is not None:
            self.after_iteration()

    def _drain_inbox(self, block: bool) -> None:
        try:
            command = self._inbox.get(block=block)
            while True:
                self._handle(*command)
                command = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _handle(self, kind: str, seq: Sequence | None, sink: Sink | None, payload: object) -> None:
        if kind in ("add", "resume"):
            assert sink is not None
            try:
                if kind == "resume":  # on this thread: eviction may touch seq
                    self.scheduler.resume(seq, *payload)
                else:
                    self.scheduler.add(seq)
            except Exception as exc:  # a request the cache can never hold
                seq.finish(FinishReason.LENGTH)
                sink(TokenEvent(seq, None, finished=True, error=str(exc)))
                return
            self._sinks[seq.seq_id] = sink
            self._admitted_at[seq.seq_id] = time.monotonic()
        elif kind == "release":
            self.scheduler.drop(seq)
        elif kind == "fail" and self.failure is None:
            assert isinstance(payload, str)
            self._fail_engine(payload)
        elif kind == "abort" and seq.seq_id in self._sinks:
            self._admitted_at.pop(seq.seq_id, None)
            self.scheduler.abort(seq)
            self._sinks.pop(seq.seq_id)(TokenEvent(seq, None, finished=True))

    def _step(self) -> None:
        plan = self.scheduler.schedule()
        if not plan:
            logger.debug("nothing schedulable this step; waiting for blocks")
            time.sleep(0.001)  # never spin hot while waiting for an abort or release
            return
        try:
            output = self.runner.step(plan)
        except EngineFailed as exc:
            self._fail_engine(str(exc))
            return
        except Exception as exc:
            self._fail_step(plan, exc)
            return
        self._abort_failed(plan, output.errors)
        # A prefill chunk that stops short of the prompt's end samples nothing worth reporting.
        completes = [
            s.num_cached_tokens + n >= s.num_tokens
            for s, n in zip(plan.seqs, plan.num_scheduled, strict=True)
        ]
        self.scheduler.postprocess(plan, output.token_ids)
        logprobs = output.logprobs or [None] * len(plan.seqs)
        extras = output.extras or [None] * len(plan.seqs)
        for seq, token_id, lp, extra, done in zip(
            plan.seqs, output.token_ids, logprobs, extras, completes, strict=True
        ):
            if seq.seq_id not in self._sinks:  # aborted: its sink already had the end
                continue
            if not done:
                if extra is not None:  # rows of a prefill chunk (output_logits='all', ...)
                    self._sinks[seq.seq_id](TokenEvent(seq, None, extras=extra))
                continue
            if seq.num_output_tokens == 1 and seq.seq_id in self._admitted_at:
                self.ttft.observe(time.monotonic() - self._admitted_at.pop(seq.seq_id))
            sink = self._sinks[seq.seq_id] if not seq.is_finished else self._sinks.pop(seq.seq_id)
            sink(TokenEvent(seq, token_id, lp, finished=seq.is_finished, extras=extra))

    def _fail_step(self, plan: StepPlan, exc: Exception) -> None:
        """The runner raised (out of memory, a kernel error): only this step's sequences end,
        with ERROR; the loop and every other sequence go on. One short line is logged here:
        a traceback (rendered only at DEBUG) would stall every request on this thread."""
        summary = f"{type(exc).__name__}: {str(exc)[:500]}"
        logger.error(
            "a step over %d sequences failed; they end with finish_reason 'error': %s",
            len(plan.seqs),
            summary,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )
        error = f"the engine failed while computing this request ({summary}); retry it"
        for seq in self.scheduler.fail_step(plan):
            self._admitted_at.pop(seq.seq_id, None)
            sink = self._sinks.pop(seq.seq_id, None)
            if sink is not None:
                sink(TokenEvent(seq, None, finished=True, error=error))

    def _abort_failed(self, plan: StepPlan, errors: list[str | None] | None) -> None:
        """A sequence whose own options failed ends alone; the rest of the step goes on."""
        for seq, error in zip(plan.seqs, errors or (), strict=False):
            if error is not None and seq.seq_id in self._sinks:
                logger.error("request %d aborted: %s", seq.seq_id, error)
                self.scheduler.abort(seq)
                self._sinks.pop(seq.seq_id)(TokenEvent(seq, None, finished=True, error=error))

    def _fail_engine(self, reason: str) -> None:
        """The runner can never step again: every request ends with `reason`, and so does
        every later one (`failure` tells the server to report itself unhealthy)."""
        logger.error("the engine failed: %s", reason)
        self.failure = reason
        s = self.scheduler
        for seq in s.fail_step(StepPlan(seqs=[*s.running, *s.waiting, *s.swapped])):
            self._admitted_at.pop(seq.seq_id, None)
            sink = self._sinks.pop(seq.seq_id, None)
            if sink is not None:
                sink(TokenEvent(seq, None, finished=True, error=reason))

    def _abort_everything(self, reason: str) -> None:
        s = self.scheduler
        for seq in [*s.running, *s.waiting, *s.swapped]:
            self.scheduler.abort(seq)
            sink = self._sinks.pop(seq.seq_id, None)
            if sink:
                sink(TokenEvent(seq, None, finished=True, error=reason))
