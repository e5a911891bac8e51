"""What the paged attention kernels share about their scores: the log2-domain scale and
Gemma 2's logit soft-capping, `scores = softcap * tanh(scale * q.k / softcap)`.

The kernels exponentiate with `exp2`, so scores carry a factor log2(e). Without capping the
launcher folds it into the scale; with capping, the tanh takes `q.k * (scale / softcap)` and its
result is multiplied by `softcap * log2(e)`, which costs no extra multiply per score.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


def score_scales(scale: float, logit_softcap: float | None) -> tuple[float, float]:
    """(qk_scale, softcap_log2) for the kernels; softcap_log2 is 0.0 when capping is off."""
    if logit_softcap is None:
        return scale * LOG2E, 0.0
    if not logit_softcap > 0:
        raise ValueError(f"logit_softcap must be positive or None, got {logit_softcap}")
    return scale / logit_softcap, logit_softcap * LOG2E


def check_window(sliding_window: int | None) -> None:
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(
            f"sliding_window must be a positive number of tokens or None, got {sliding_window}"
        )


@triton.jit
def soft_cap(x, softcap_log2):
    """softcap_log2 * tanh(x). tanh from exp2 of -2|x| (the interpreter has no libdevice tanh):
    no overflow at any |x|, absolute error ~1e-7, far under what the softmax resolves."""
    t = tl.exp2(-2.8853900817779268 * tl.abs(x))  # exp(-2|x|); the literal is 2 * LOG2E
    th = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -th, th) * softcap_log2
