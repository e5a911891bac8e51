"""The engine process's side of the pipe: commands in, each iteration's events out.

This process's main thread reads commands and hands them to the `EngineLoop` (whose own
thread schedules and steps); the sinks only append rows to an outbox, which the engine thread
sends as one message at the end of each iteration (`EngineLoop.after_iteration`). Nothing
here runs per token but an append: the engine thread keeps the GIL for its steps, and the
front's Python (HTTP, detokenizing, JSON) runs in another process.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from multiprocessing.connection import Connection

from ...application.engine import EngineLoop, TokenEvent
from ...application.ports import GrammarBackend
from ...application.response_format import recompile
from ...domain.sequence import FinishReason, Sequence
from . import wire

logger = logging.getLogger(__name__)


class EngineHost:
    def __init__(
        self,
        engine: EngineLoop,
        commands: Connection,
        replies: Connection,
        grammar: GrammarBackend | None,
    ) -> None:
        self.engine = engine
        self._commands = commands
        self._replies = replies
        self._grammar = grammar
        # Sequences the front may still name: live ones, and finished turns of interactive
        # sessions (parked until `release`).
        self._seqs: dict[int, Sequence] = {}
        self._outbox: list[wire.EventRow] = []
        self._outbox_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._reported_failure: str | None = None

    def serve(self) -> None:
        """Until the front says stop or goes away; then the loop stops (ending what runs)."""
        self.engine.after_iteration = self.flush
        try:
            while True:
                try:
                    command = wire.loads(self._commands.recv_bytes())
                except (EOFError, OSError):
                    logger.warning("the server's front went away; stopping the engine")
                    break
                if command[0] == wire.STOP:
                    break
                self._handle(command)
                self.flush()  # events a command emitted on this thread (a refused submit)
        finally:
            self.engine.stop()
            self.flush()
            self._send((wire.CLOSED,))

    def _handle(self, command: tuple) -> None:
        kind = command[0]
        if kind == wire.ADD:
            spec: wire.SequenceSpec = command[1]
            parent = self._seqs.get(spec.fork_parent_id) if spec.fork_parent_id else None
            try:
                seq = spec.build(self._grammar, parent)
            except Exception as exc:  # the grammar did not compile here: that request alone
                self._fail(spec.seq_id, f"the engine could not take this request: {exc}")
                return
            self._seqs[seq.seq_id] = seq
            self.engine.submit(seq, self._post)
        elif kind == wire.RESUME:
            _, spec, token_ids, sampling = command
            seq = self._seqs.get(spec.seq_id)
            try:
                if seq is None:  # a session's first turn: built with the turn's sampling, so
                    # its grammar compiles once
                    seq = replace(spec, sampling=sampling).build(self._grammar, None)
                    sampling = seq.sampling
                else:
                    sampling = recompile(sampling, self._grammar)
            except Exception as exc:
                self._fail(spec.seq_id, f"the engine could not take this request: {exc}")
                return
            self._seqs[seq.seq_id] = seq
            self.engine.resume(seq, token_ids, sampling, self._post)
        elif kind == wire.ABORT:
            seq = self._seqs.get(command[1])
            if seq is not None:
                self.engine.abort(seq)
        elif kind == wire.RELEASE:
            seq = self._seqs.pop(command[1], None)
            if seq is not None:
                self.engine.release(seq)
        elif kind == wire.STATS:
            self._send(
                (wire.STATS_REPLY, command[1], self.engine.stats(), self.engine.ttft.snapshot())
            )
        else:
            logger.error("unknown command %r from the front; ignored", kind)

    def _post(self, event: TokenEvent) -> None:
        """The sink of every sequence: called on the engine thread, once per event."""
        seq = event.seq
        reason = None
        if event.finished:
            reason = seq.finish_reason.value if seq.finish_reason is not None else None
            if not seq.keep_cache:
                self._seqs.pop(seq.seq_id, None)
        row = (
            seq.seq_id,
            event.token_id,
            event.logprobs,
            event.finished,
            reason,
            event.error,
            event.extras,
        )
        with self._outbox_lock:
            self._outbox.append(row)

    def _fail(self, seq_id: int, error: str) -> None:
        with self._outbox_lock:
            self._outbox.append((seq_id, None, None, True, FinishReason.ERROR.value, error, None))

    def flush(self) -> None:
        """Send the events posted since the last flush, and a failure not yet reported.
        Both threads flush; taking the rows under the send lock keeps a sequence's events
        in the order they were posted."""
        with self._send_lock:
            with self._outbox_lock:
                rows, self._outbox = self._outbox, []
            failure = self.engine.failure
            if not rows and failure == self._reported_failure:
                return
            self._reported_failure = failure
            self._write((wire.EVENTS, rows, failure))

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._write(message)

    def _write(self, message: tuple) -> None:
        try:
            self._replies.send_bytes(wire.dumps(message))
        except OSError:  # the front is gone (a broken pipe); serve() ends on its EOF
            pass
