"""The image embeddings a step's flat tokens take: for each planned sequence, the rows of its
images' spans that fall in this step's chunk (a prefill chunk may start or stop inside an
image; each chunk takes just its own rows)."""

from __future__ import annotations

import torch

from .....domain.scheduler import StepPlan
from ..models.base import ImageRows


def touches_images(plan: StepPlan) -> bool:
    """Whether any sequence computes an image position this step."""
    return any(
        span.end > seq.num_cached_tokens and span.offset < seq.num_cached_tokens + num
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True)
        for span in seq.images
    )


def gather_image_rows(plan: StepPlan, device: torch.device) -> ImageRows | None:
    """Flat token index -> embedding row of every image position in the step (None: none)."""
    index: list[torch.Tensor] = []
    rows: list[torch.Tensor] = []
    base = 0
    for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
        start, end = seq.num_cached_tokens, seq.num_cached_tokens + num
        for span in seq.images:
            lo, hi = max(span.offset, start), min(span.end, end)
            if lo >= hi:
                continue
            assert span.embeddings is not None, "an image reached the engine unencoded"
            index.append(torch.arange(base + lo - start, base + hi - start))
            rows.append(span.embeddings[lo - span.offset : hi - span.offset])
        base += num
    if not rows:
        return None
    return ImageRows(torch.cat(index).to(device), torch.cat([r.to(device) for r in rows]))
