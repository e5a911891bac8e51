"""User logits processors, `fn(input_ids, scores) -> scores`, applied row by row on the device.

They run after the built-in token rules (bad ids, min_new_tokens, repetition penalty) and
before temperature and the top-k/top-p/min-p filters, in list order. A processor that raises
or returns the wrong shape fails its own row only: the runner reports the error and the engine
aborts that request while the others go on.
"""

from __future__ import annotations

import torch

from .....domain.scheduler import StepPlan


def wants_processors(plan: StepPlan) -> bool:
    return any(seq.sampling.logits_processors for seq in plan.seqs)


class LogitsProcessorHook:
    """Called by `sample()` on the rule-adjusted logits [B, vocab]; records per-row errors."""

    def __init__(self, plan: StepPlan) -> None:
        self.seqs = plan.seqs
        # A prefill chunk short of the prompt's end samples nothing: its processors do not run.
        self.completes = [
            s.num_cached_tokens + n >= s.num_tokens
            for s, n in zip(plan.seqs, plan.num_scheduled, strict=True)
        ]
        self.errors: list[str | None] = [None] * len(plan.seqs)

    def __call__(self, logits: torch.Tensor) -> None:
        for row, (seq, completes) in enumerate(zip(self.seqs, self.completes, strict=True)):
            if completes and seq.sampling.logits_processors:
                self.errors[row] = self._apply(
                    row, seq.token_ids, seq.sampling.logits_processors, logits
                )

    @staticmethod
    def _apply(row: int, token_ids: list[int], processors, logits: torch.Tensor) -> str | None:
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=logits.device)
        scores = logits[row]
        for i, fn in enumerate(processors):
            name = getattr(fn, "__name__", type(fn).__name__)
            try:
                result = fn(input_ids, scores)
            except Exception as exc:
                return f"logits_processors[{i}] ({name}) raised {exc!r}"
            if not isinstance(result, torch.Tensor) or result.shape != scores.shape:
                got = (
                    tuple(result.shape)
                    if isinstance(result, torch.Tensor)
                    else type(result).__name__
                )
                return (
                    f"logits_processors[{i}] ({name}) returned {got}; it must return a tensor "
                    f"of the scores' shape {tuple(scores.shape)}"
                )
            scores = result
        logits[row] = scores
        return None
