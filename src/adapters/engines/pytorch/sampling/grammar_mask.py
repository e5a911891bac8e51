"""Grammar constraints in a step: one token bitmask for the constrained rows, applied to their
logits in one device op, and the sampled tokens fed back to each row's constraint.

The constraints (TokenConstraint port) fill an int32 bitmask on the host, a bit per token id;
the rest is device-agnostic torch, so CPU and CUDA run the same code.
"""

from __future__ import annotations

import logging

import torch

from .....application.ports import TokenConstraint
from .....application.response_format import CONSTRAINT
from .....domain.scheduler import StepPlan

logger = logging.getLogger(__name__)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, the logits of `rows` whose bit in `bitmask` [B, W] (row for row
    with `logits` [B, V]) is 0; columns past the bitmask's W * 32 tokens too.

    On CUDA, xgrammar's kernel when it is installed. On the CPU, torch ops: xgrammar's CPU
    kernel is faster by itself (about 4 ms against 25 at batch 16) but made the rest of each
    step several times slower on 2 cores (its threads against torch's), see grammar_overhead.py."""
    bitmask = bitmask.to(logits.device, non_blocking=True)
    covered = min(logits.shape[-1], bitmask.shape[-1] * 32)
    kernel = None
    if logits.is_cuda:
        try:
            from xgrammar import apply_token_bitmask_inplace as kernel
        except ImportError:
            pass
    if kernel is None:
        apply_token_bitmask_torch(logits[:, :covered], bitmask, rows)
    else:
        indices = None if len(rows) == logits.shape[0] else rows
        kernel(logits, bitmask, vocab_size=covered, indices=indices)
    if covered < logits.shape[-1]:
        logits[rows, covered:] = -float("inf")


def apply_token_bitmask_torch(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """The same in device-agnostic torch ops (bit j of word w is token 32 * w + j)."""
    index = torch.tensor(rows, dtype=torch.int64, device=logits.device)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    words = bitmask[index]
    allowed = ((words[:, :, None] >> shifts) & 1).bool().flatten(1)[:, : logits.shape[-1]]
    logits[index] = logits[index].masked_fill(~allowed, -float("inf"))


class GrammarMask:
    """The constrained rows of one step that sample a token (a prefill chunk that stops short of
    the prompt's end samples nothing, so its constraint neither masks nor accepts)."""

    def __init__(self, rows: list[int], constraints: list[TokenConstraint]) -> None:
        self.rows = rows
        self.constraints = constraints

    @classmethod
    def from_plan(cls, plan: StepPlan) -> GrammarMask | None:
        rows, constraints = [], []
        for row, (seq, num) in enumerate(zip(plan.seqs, plan.num_scheduled, strict=True)):
            constraint = seq.sampling.extra.get(CONSTRAINT)
            if constraint is None or seq.num_cached_tokens + num < seq.num_tokens:
                continue
            # After preemption the sequence re-prefills tokens its matcher already took: the
            # matcher must be exactly at the next output token, or it must not be fed.
            if constraint.num_accepted != seq.num_output_tokens or constraint.is_terminated():
                logger.error(
                    "sequence %d: grammar state at token %d, sequence at %d; left unconstrained",
                    seq.seq_id,
                    constraint.num_accepted,
                    seq.num_output_tokens,
                )
                continue
            rows.append(row)
            constraints.append(constraint)
        return cls(rows, constraints) if rows else None

    def apply(self, logits: torch.Tensor) -> None:
        words = -(-self.constraints[0].vocab_size // 32)
        bitmask = torch.zeros((logits.shape[0], words), dtype=torch.int32)
        for row, constraint in zip(self.rows, self.constraints, strict=True):
            constraint.fill_bitmask(bitmask, row)
        apply_token_bitmask(logits, bitmask, self.rows)

    def accept(self, token_ids: list[int]) -> None:
        for row, constraint in zip(self.rows, self.constraints, strict=True):
            if not constraint.accept(token_ids[row]):
                logger.error("grammar rejected sampled token %d", token_ids[row])
