"""Per-sequence extras of a forward pass: logits and last hidden states of chosen positions,
and the prompt's next-token cross-entropy (get_ppl), moved to host memory.

The prompt loss never holds `[T, vocab]` logits for a long chunk: it projects and reduces
`LOSS_SLICE` rows at a time, so memory stays bounded by the slice, not the prompt.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .....domain.scheduler import StepPlan
from .....domain.sequence import Sequence
from ..models.base import CausalLM

LOSS_SLICE = 512  # rows of logits alive at once while scoring a prompt ([512, vocab] fp32)


def wants_extras(plan: StepPlan) -> bool:
    return any(seq.sampling.needs_hidden_rows for seq in plan.seqs)


def collect_extras(
    model: CausalLM, hidden: torch.Tensor, plan: StepPlan
) -> list[dict[str, Any] | None]:
    """hidden: [num_tokens, hidden_size], the step's new tokens in plan order."""
    out: list[dict[str, Any] | None] = []
    offset = 0
    for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
        rows, offset = hidden[offset : offset + num], offset + num
        out.append(_extras_of(model, seq, rows) if seq.sampling.needs_hidden_rows else None)
    return out


def _extras_of(model: CausalLM, seq: Sequence, rows: torch.Tensor) -> dict[str, Any]:
    params, start, num = seq.sampling, seq.num_cached_tokens, rows.shape[0]
    completes = start + num >= seq.num_tokens
    extra: dict[str, Any] = {}
    for name, mode in (
        ("logits", params.output_logits),
        ("last_hidden_state", params.output_last_hidden_state),
    ):
        if mode == "all":
            extra[name] = (start, _to_host(model, name, rows))
        elif mode == "generation" and completes:  # the row that samples this step's token
            extra[name] = (start + num - 1, _to_host(model, name, rows[-1:]))
    if params.prompt_loss:
        extra["prompt_loss"] = (start, *_prompt_loss(model, seq, rows, start))
    return extra


def _to_host(model: CausalLM, name: str, rows: torch.Tensor) -> torch.Tensor:
    values = model.compute_logits(rows) if name == "logits" else rows
    return values.to("cpu", copy=True)


def _prompt_loss(
    model: CausalLM, seq: Sequence, rows: torch.Tensor, start: int
) -> tuple[float, int]:
    """Summed cross-entropy of the prompt tokens these rows predict, and how many."""
    num = min(rows.shape[0], seq.num_prompt_tokens - 1 - start)
    if num <= 0:
        return 0.0, 0
    targets = torch.tensor(seq.token_ids[start + 1 : start + 1 + num], device=rows.device)
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    for a in range(0, num, LOSS_SLICE):
        b = min(num, a + LOSS_SLICE)
        logits = model.compute_logits(rows[a:b])
        total += F.cross_entropy(logits, targets[a:b], reduction="sum").double()
    return float(total), num


def join_rows(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The JoinRows port: several steps' host rows as one tensor."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)
