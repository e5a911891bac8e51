"""`pipe.get_ppl`: the mean next-token cross-entropy of token sequences, through the engine.

Each sequence runs as a prefill-only request (one throw-away token) whose runner reports the
summed loss of each prefill chunk, so a long input is scored chunk by chunk under the step's
token budget and never needs its [T, vocab] logits at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..domain.errors import InvalidArgument, PromptTooLong
from ..domain.sampling_params import SamplingParams
from .generation import GenerationService, PreparedRequest

_SCORE = SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True, prompt_loss=True)


def token_batches(input_ids: Any, vocab_size: int) -> list[list[int]]:
    """A list of ints is one sequence; a list of lists is a batch. Every id must be an int in
    the vocabulary and every sequence at least 2 tokens (one token predicts nothing)."""
    if isinstance(input_ids, Mapping) and "input_ids" in input_ids:
        # transformers 5's `apply_chat_template` returns an encoding where 4 returned the ids;
        # the documentation's get_ppl example passes it on as it comes.
        input_ids = input_ids["input_ids"]
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise InvalidArgument("input_ids", "pass a non-empty list of token ids or of such lists")
    batch = [input_ids] if not isinstance(input_ids[0], (list, tuple)) else list(input_ids)
    for i, ids in enumerate(batch):
        if not isinstance(ids, (list, tuple)):
            raise InvalidArgument("input_ids", f"item {i} is a {type(ids).__name__}, not a list")
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int)]
        if bad:
            raise InvalidArgument("input_ids", f"sequence {i} holds non-int ids, e.g. {bad[0]!r}")
        if len(ids) < 2:
            raise InvalidArgument("input_ids", f"sequence {i} needs at least 2 tokens")
        if not all(0 <= t < vocab_size for t in ids):
            raise InvalidArgument(
                "input_ids", f"sequence {i} holds ids outside the vocabulary [0, {vocab_size})"
            )
    return [list(ids) for ids in batch]


def prompt_losses(service: GenerationService, batch: list[list[int]]) -> list[float]:
    """Mean cross-entropy of each sequence (not exponentiated), the batch run concurrently."""
    for ids in batch:
        if len(ids) >= service.session_len:
            raise PromptTooLong(len(ids), service.session_len)
    streams = [service.submit(PreparedRequest(input_ids=ids, sampling=_SCORE)) for ids in batch]
    losses = []
    try:
        for i, stream in enumerate(streams):
            final = list(stream)[-1]
            if final.error or final.prompt_loss is None or final.finish_reason == "abort":
                raise RuntimeError(f"get_ppl: sequence {i} failed: {final.error or 'aborted'}")
            total, count = final.prompt_loss
            losses.append(total / count)
    finally:
        for stream in streams:
            stream.cancel()
    return losses
