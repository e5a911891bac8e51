"""What crosses the pipe between the server's front and its engine process, and how.

Messages are tuples pickled (protocol 5) onto `multiprocessing.connection` pipes, one
message a command or a step's events. A sequence crosses once, when it is submitted; from
then on both sides name it by its `seq_id`. The engine answers with one message per engine
iteration carrying every event of that iteration as plain tuples (`EventRow`), so a
256-row step is one pickle, one write and one wake-up of the front.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, replace
from typing import Any

from ...application.ports import GrammarBackend
from ...application.response_format import CONSTRAINT, recompile
from ...domain.sampling_params import SamplingParams
from ...domain.sequence import Sequence

# front -> engine: (ADD, SequenceSpec), (RESUME, SequenceSpec, token_ids, sampling),
# (ABORT, seq_id), (RELEASE, seq_id), (STATS, request_id), (STOP,)
ADD, RESUME, ABORT, RELEASE, STATS, STOP = "add", "resume", "abort", "release", "stats", "stop"
# engine -> front: (READY, ModelFacts) or (START_FAILED, exception) once; then
# (EVENTS, [EventRow], failure or None), (STATS_REPLY, request_id, EngineStats, ttft), (CLOSED,)
READY, START_FAILED = "ready", "start_failed"
EVENTS, STATS_REPLY, CLOSED = "events", "stats_reply", "closed"

# (seq_id, token_id, logprobs, finished, finish_reason value, error, extras)
EventRow = tuple[int, int | None, dict | None, bool, str | None, str | None, dict | None]


def dumps(message: tuple) -> bytes:
    return pickle.dumps(message, protocol=5)


def loads(data: bytes) -> tuple:
    return pickle.loads(data)


@dataclass(frozen=True)
class ModelFacts:
    """What the front needs to know of the model it does not load: enough to build the
    tokenizer, the chat template and the request checks."""

    vocab_size: int
    eos_token_ids: frozenset[int]
    max_position_embeddings: int


@dataclass(frozen=True)
class SequenceSpec:
    """A submitted sequence as the engine process rebuilds it (same `seq_id`)."""

    seq_id: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    max_len: int
    eos_token_ids: frozenset[int]
    keep_cache: bool
    adapter_name: str | None
    fork_parent_id: int | None  # the sibling choice whose prompt blocks it shares

    @classmethod
    def of(cls, seq: Sequence) -> SequenceSpec:
        if seq.images:
            raise ValueError("a sequence with images cannot cross to an engine process")
        return cls(
            seq.seq_id,
            list(seq.prompt_token_ids),
            portable(seq.sampling),
            seq.max_len,
            seq.eos_token_ids,
            seq.keep_cache,
            seq.adapter_name,
            seq.fork_parent.seq_id if seq.fork_parent is not None else None,
        )

    def build(self, grammar: GrammarBackend | None, fork_parent: Sequence | None) -> Sequence:
        return Sequence(
            prompt_token_ids=self.prompt_token_ids,
            sampling=recompile(self.sampling, grammar),  # compiled here, in the engine's process
            max_len=self.max_len,
            eos_token_ids=self.eos_token_ids,
            seq_id=self.seq_id,
            keep_cache=self.keep_cache,
            adapter_name=self.adapter_name,
            fork_parent=fork_parent,
        )


def portable(sampling: SamplingParams) -> SamplingParams:
    """`sampling` without its compiled grammar constraint (the spec it came from stays)."""
    if CONSTRAINT not in sampling.extra:
        return sampling
    extra: dict[str, Any] = {k: v for k, v in sampling.extra.items() if k != CONSTRAINT}
    return replace(sampling, extra=extra)
