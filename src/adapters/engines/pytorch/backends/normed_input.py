"""What a linked RMSNorm hands the one projection reading it in a one-row step (`layers/norm.py`'s
`link_norms`): its input and parameters instead of its output, so that the projection's GEMV
normalises the row in its K loop and the norm costs no launch (`backends/cuda/gemv_epilogues.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NormedInput:
    """RMSNorm(x) with `weight` and `eps`, not computed. The norm's weight as the checkpoint
    gave it is folded into the reader's (`link_norms`): `weight` is all ones, and a GEMV reading
    this divides x by its rms alone."""

    x: torch.Tensor
    weight: torch.Tensor
    eps: float
