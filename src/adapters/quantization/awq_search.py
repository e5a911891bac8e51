"""AWQ's two searches on one decoder layer, given the inputs its linears see.

Scale search: a group of linears reading the same input x (q/k/v after the input norm,
gate/up after the post-attention norm, down after up, o after v where the shapes allow)
gets per-input-channel scales s = mean|x|^alpha / mean|w|^(1 - alpha) (|w| relative to its
group's largest), alpha on a grid in [0, 1); the alpha whose
weights quantised as Q(W * s) / s give the group's module output closest (MSE) to the float
output wins, and 1/s is folded into the producer (the norm's weight or the producing
linear's rows) so the float model is unchanged. Clip search: per linear and group of input
features, shrink the range [min, max] of the weights by the ratio whose quantised group
output is closest to the float one (activation outliers make clipping worth a small error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .awq_layout import fake_quantize


@dataclass
class ScaleGroup:
    """Linears sharing one input, the module whose output measures them, and the producer
    of that input (an RMSNorm or a linear) that takes 1/s."""

    producer: nn.Module
    linears: list[nn.Linear]
    module: nn.Module
    inputs: list[torch.Tensor]  # the linears' input, per calibration batch
    run: Callable[[int], torch.Tensor]  # the module's output on batch i
    scalable: bool = True  # False: the producer cannot take the scales, the group is only clipped


@torch.no_grad()
def search_scales(group: ScaleGroup, alphas: list[float], group_size: int) -> torch.Tensor:
    """The per-input-channel scales of the best alpha (ones when alpha 0 wins: plain RTN)."""
    x_mean = torch.cat([x.reshape(-1, x.shape[-1]).abs().float() for x in group.inputs]).mean(0)
    w_mean = _weight_mean(group.linears, group_size)
    expected = [group.run(i) for i in range(len(group.inputs))]
    originals = [fc.weight.data.clone() for fc in group.linears]
    best_loss, best_scales = float("inf"), torch.ones_like(x_mean)
    for alpha in alphas:
        # AutoAWQ's "duo" scaling: large activations up, large (relative) weights down.
        scales = (x_mean.pow(alpha) / w_mean.pow(1 - alpha).clamp(min=1e-4)).clamp(min=1e-4)
        # Centred on 1 so neither the weights nor the producer drift in magnitude.
        scales = scales / (scales.max() * scales.min()).sqrt()
        for fc, w in zip(group.linears, originals, strict=True):
            s = scales.to(w.dtype)
            fc.weight.data = fake_quantize(w * s, group_size) / s
        loss = sum(
            (group.run(i).float() - out.float()).pow(2).mean().item()
            for i, out in enumerate(expected)
        )
        if loss < best_loss:
            best_loss, best_scales = loss, scales
    for fc, w in zip(group.linears, originals, strict=True):
        fc.weight.data = w
    return best_scales


def _weight_mean(linears: list[nn.Linear], group_size: int) -> torch.Tensor:
    """Per input channel, the mean magnitude of the weights relative to their group's max."""
    w = torch.cat([fc.weight.data.float() for fc in linears])
    groups = w.abs().view(len(w), -1, group_size)
    return (groups / groups.amax(-1, keepdim=True).clamp(min=1e-8)).view_as(w).mean(0)


@torch.no_grad()
def fold_scales(group: ScaleGroup, scales: torch.Tensor) -> None:
    """W <- W * s for the group's linears, the producer's output <- output / s; the inputs
    kept for the clip search follow."""
    for fc in group.linears:
        fc.weight.mul_(scales.to(fc.weight.dtype))
    producer = group.producer
    producer.weight.div_(
        scales.to(producer.weight.dtype).view(-1, *[1] * (producer.weight.dim() - 1))
    )
    if getattr(producer, "bias", None) is not None:
        producer.bias.div_(scales.to(producer.bias.dtype))
    for x in group.inputs:
        x.div_(scales.to(x.dtype))


@torch.no_grad()
def search_clip(
    linear: nn.Linear, inputs: list[torch.Tensor], group_size: int, grid: int, max_tokens: int
) -> None:
    """Clamp each group of `linear`'s weights to the shrunken range that quantises best for
    the group's share of the output, measured on up to `max_tokens` input rows."""
    w = linear.weight.data
    out_features, in_features = w.shape
    x = torch.cat([t.reshape(-1, in_features) for t in inputs]).float()
    x = x[torch.linspace(0, len(x) - 1, min(max_tokens, len(x))).long()]
    # A group's output error over the tokens, mean_t (x_g . d_g)^2, is d_g' C_g d_g with C_g
    # the group's input covariance: one small matrix per group instead of every token.
    xg = x.view(len(x), -1, group_size).transpose(0, 1)
    covariance = xg.transpose(1, 2) @ xg / len(x)  # [groups, k, k]
    wg = w.float().view(out_features, -1, group_size)
    lo0, hi0 = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    best_err = torch.full(wg.shape[:2], float("inf"))
    lo, hi = lo0, hi0
    for step in range(grid // 2):  # ratios 1 down to 0.5, as AutoAWQ's max shrink
        ratio = 1 - step / grid
        clipped = wg.clamp(lo0 * ratio, hi0 * ratio).view_as(w)
        d = (fake_quantize(clipped, group_size).view_as(wg) - wg).transpose(0, 1)  # [g, o, k]
        err = ((d @ covariance) * d).sum(-1).transpose(0, 1)  # [o, g]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        lo = torch.where(better[..., None], lo0 * ratio, lo)
        hi = torch.where(better[..., None], hi0 * ratio, hi)
    linear.weight.data = wg.clamp(lo, hi).view_as(w).to(w.dtype)
