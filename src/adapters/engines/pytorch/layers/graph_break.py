"""The graph break at attention: while piecewise CUDA graphs are being captured
(runner/piecewise_graph.py), `paged_attention` hands its call to a hook instead of running it.

The hook is a context variable set only by the capture, so outside it a step pays one
`ContextVar.get` per attention call and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .attention import AttentionOptions


@dataclass(frozen=True)
class AttentionCall:
    """One layer's `paged_attention` call, less the step's metadata: what the capture records
    and what a replay runs eagerly with the real metadata of its step."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    opts: AttentionOptions
    kv_written: bool
    scale_zero: tuple[torch.Tensor, torch.Tensor] | None


AttentionBreak = Callable[[AttentionCall], torch.Tensor]

_hook: ContextVar[AttentionBreak | None] = ContextVar("attention_break", default=None)


def current_break() -> AttentionBreak | None:
    return _hook.get()


@contextmanager
def breaking_at_attention(hook: AttentionBreak) -> Iterator[None]:
    """Within: every `paged_attention` call returns `hook(call)` instead of attending."""
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
