"""The front's side of the pipe: the `Engine` port for an engine that runs in its own process.

The server's event loop (HTTP, JSON, detokenizing: tens of microseconds of Python a streamed
chunk) and the engine's scheduling and step launches both need the interpreter; in one
process they take turns on the GIL and a 256-stream server's steps stretch. Here they run in
two. Each `Sequence` the services hold is a mirror: its tokens, status and finish reason are
set from the engine's events before the sink sees them, which is all a stream or a session
reads of it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from ...application.engine import EngineStats, Sink, TokenEvent
from ...application.latency import HistogramSnapshot
from ...domain.errors import InvalidArgument
from ...domain.sampling_params import SamplingParams
from ...domain.sequence import FinishReason, ImageSpan, Sequence, SequenceStatus
from . import wire

logger = logging.getLogger(__name__)

_STATS_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 60.0


@dataclass
class _StatsReply:
    done: threading.Event = field(default_factory=threading.Event)
    stats: EngineStats | None = None
    ttft: HistogramSnapshot | None = None


class _RemoteLatencies:
    def __init__(self, engine: RemoteEngine) -> None:
        self._engine = engine

    def snapshot(self) -> HistogramSnapshot:
        return self._engine.fetch_stats()[1]


class RemoteEngine:
    """Commands go down `commands`; a receiver thread reads `replies` and calls the sinks."""

    def __init__(self, process: BaseProcess, commands: Connection, replies: Connection) -> None:
        self._process = process
        self._commands = commands
        self._replies = replies
        self._lock = threading.Lock()  # the pipe's writer, and `_live` against `_lost`
        self._live: dict[int, tuple[Sequence, Sink]] = {}
        self._requests = itertools.count()
        self._pending: dict[int, _StatsReply] = {}
        self._last: tuple[EngineStats, HistogramSnapshot] | None = None
        self._closed = threading.Event()  # the engine said it stopped
        self._ended = threading.Event()  # ... or its pipe ended: nothing more will come
        self.failure: str | None = None
        self.ttft = _RemoteLatencies(self)
        self._receiver = threading.Thread(
            target=self._receive, name="lmdeploy-engine-replies", daemon=True
        )
        self._receiver.start()
        self.fetch_stats()  # a first reading, answered while the engine is known to be up

    # -- the Engine port ----------------------------------------------------------------------
    def submit(self, seq: Sequence, sink: Sink) -> None:
        self._hand_over(seq, sink, (wire.ADD, wire.SequenceSpec.of(seq)))

    def resume(
        self,
        seq: Sequence,
        token_ids: list[int],
        sampling: SamplingParams,
        sink: Sink,
        images: tuple[ImageSpan, ...] = (),
    ) -> None:
        if images:
            raise InvalidArgument(
                "images", "this server's engine runs in its own process and takes text only"
            )
        # The spec lets the engine build a session's first turn (a sequence it never saw);
        # it is taken before the mirror moves on to the turn, as the engine's own will.
        spec = wire.SequenceSpec.of(seq)
        seq.continue_with(token_ids, sampling)
        self._hand_over(seq, sink, (wire.RESUME, spec, list(token_ids), wire.portable(sampling)))

    def abort(self, seq: Sequence) -> None:
        with self._lock:
            self._write((wire.ABORT, seq.seq_id))

    def release(self, seq: Sequence) -> None:
        with self._lock:
            self._write((wire.RELEASE, seq.seq_id))

    def stats(self) -> EngineStats:
        return self.fetch_stats()[0]

    def fetch_stats(self) -> tuple[EngineStats, HistogramSnapshot]:
        """The engine's counters now; the last reading when it cannot answer (it is gone, or
        busy longer than `_STATS_TIMEOUT_S`)."""
        reply = _StatsReply()
        with self._lock:
            if self.failure is None:
                request = next(self._requests)
                self._pending[request] = reply
                self._write((wire.STATS, request))
            else:
                reply.done.set()
        if reply.done.wait(_STATS_TIMEOUT_S) and reply.stats is not None:
            self._last = (reply.stats, reply.ttft)
        if self._last is None:
            raise RuntimeError(f"the engine process did not answer: {self.failure}")
        return self._last

    def stop(self) -> None:
        """Stop the engine (what still runs ends with an error) and its process."""
        with self._lock:
            self._write((wire.STOP,))
        self._ended.wait(_STOP_TIMEOUT_S)
        self._process.join(_STOP_TIMEOUT_S)
        if self._process.is_alive():
            logger.error("the engine process did not exit; terminating it")
            self._process.terminate()
            self._process.join(5)
        self._commands.close()

    # -- the pipe ---------------------------------------------------------------------------
    def _hand_over(self, seq: Sequence, sink: Sink, command: tuple) -> None:
        """Send `command` for `seq`, whose events then go to `sink`; once the engine has
        failed, end `seq` at once with the failure instead (as the engine loop does)."""
        with self._lock:
            if self.failure is None:
                self._live[seq.seq_id] = (seq, sink)
                self._write(command)
                return
        seq.finish(FinishReason.ERROR)
        sink(TokenEvent(seq, None, finished=True, error=self.failure))

    def _write(self, message: tuple) -> None:
        """Under `_lock`. A dead engine's pipe raises; the receiver reports it."""
        try:
            self._commands.send_bytes(wire.dumps(message))
        except OSError:
            pass

    # -- the receiver thread ------------------------------------------------------------------
    def _receive(self) -> None:
        while True:
            try:
                message = wire.loads(self._replies.recv_bytes())
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == wire.EVENTS:
                self._dispatch(message[1])
                if message[2] is not None and self.failure is None:
                    self.failure = message[2]
            elif kind == wire.STATS_REPLY:
                reply = self._pending.pop(message[1], None)
                if reply is not None:
                    reply.stats, reply.ttft = message[2], message[3]
                    reply.done.set()
            elif kind == wire.CLOSED:
                self._closed.set()
                break
        if not self._closed.is_set():
            self._lost()
        self._ended.set()

    def _dispatch(self, rows: list[wire.EventRow]) -> None:
        live = self._live
        for seq_id, token_id, logprobs, finished, reason, error, extras in rows:
            entry = live.pop(seq_id, None) if finished else live.get(seq_id)
            if entry is None:  # ended already (the front gave up on it): nothing reads it
                continue
            seq, sink = entry
            if token_id is not None:
                seq.token_ids.append(token_id)
            if finished:
                seq.status = SequenceStatus.FINISHED
                seq.finish_reason = FinishReason(reason) if reason is not None else None
            sink(TokenEvent(seq, token_id, logprobs, finished, error, extras))

    def _lost(self) -> None:
        """The engine process died: every request in flight, and every later one, fails."""
        self._process.join(1)
        reason = (
            f"the engine process exited unexpectedly (exit code {self._process.exitcode}); "
            "restart the server"
        )
        logger.error(reason)
        with self._lock:
            self.failure = self.failure or reason
            live, self._live = self._live, {}
            pending, self._pending = self._pending, {}
        for reply in pending.values():
            reply.done.set()
        for seq, sink in live.values():
            seq.finish(FinishReason.ERROR)
            sink(TokenEvent(seq, None, finished=True, error=self.failure))
