"""SmoothQuant's migration of activation outliers into weights (Xiao et al., 2022), with
LMDeploy 0.6.5's choices: per input channel `s = amax_x^alpha / mean_w^(1-alpha)`, where
`mean_w` is the mean over output rows of |w| / its row's max, normalised so that
max(s) * min(s) = 1, clamped at 1e-4. The producer of the activations is divided by `s`, its
consumers' weight columns multiplied by it: the float model computes the same function."""

from __future__ import annotations

import torch
from torch import nn

_FLOOR = 1e-4  # keeps a dead channel from dividing by zero


def _weight_scales(weights: list[torch.Tensor]) -> torch.Tensor:
    w = torch.cat(weights).abs().float()
    return (w / w.amax(dim=1, keepdim=True).clamp(min=_FLOOR)).mean(dim=0)


def migration_scales(
    act_amax: torch.Tensor, consumers: list[nn.Linear], alpha: float, live: torch.Tensor
) -> torch.Tensor:
    """s per input channel of `consumers`; channels where `live` is False keep s = 1."""
    w_scales = _weight_scales([fc.weight for fc in consumers]).pow(1 - alpha).clamp(min=_FLOOR)
    s = (act_amax.float().to(w_scales.device).pow(alpha) / w_scales).clamp(min=_FLOOR)
    s = s / (s[live].max() * s[live].min()).sqrt()
    return torch.where(live, s, torch.ones_like(s))


@torch.no_grad()
def smooth_norm_into(
    norm: nn.Module, consumers: list[nn.Linear], act_amax: torch.Tensor, alpha: float
) -> None:
    """An RMSNorm's weight divided by s, the linears reading its output multiplied by it.
    A channel the norm zeroes carries nothing to migrate."""
    live = norm.weight != 0
    s = migration_scales(act_amax, consumers, alpha, live)
    norm.weight.div_(s.to(norm.weight.dtype))
    for fc in consumers:
        fc.weight.mul_(s.to(fc.weight.dtype))


@torch.no_grad()
def smooth_linear_into(
    producer: nn.Linear, consumers: list[nn.Linear], act_amax: torch.Tensor, alpha: float
) -> None:
    """A linear's output rows divided by s, the linears reading them multiplied by it
    (v_proj -> o_proj, up_proj -> down_proj). With grouped-query attention v_proj has fewer
    rows than o_proj has inputs (heads share a v head): then nothing is migrated, as in 0.6.5."""
    if producer.weight.shape[0] != act_amax.numel():
        return
    live = torch.ones_like(act_amax, dtype=torch.bool)
    s = migration_scales(act_amax, consumers, alpha, live)
    producer.weight.div_(s.view(-1, 1).to(producer.weight.dtype))
    if producer.bias is not None:
        producer.bias.div_(s.to(producer.bias.dtype))
    for fc in consumers:
        fc.weight.mul_(s.to(fc.weight.dtype))
