"""RMSNorm, alone or fused with the residual add before it, dispatched once to a backend: the
Triton kernels on CUDA, the C kernels on a CPU in float32, torch ops elsewhere. Before a W8A8
linear's kernel, the norm quantises its output too (`quantize_output`).

In a one-row step on CUDA a norm may cost no launch of its own (`link_norms`): the linear before
it adds the residual in its GEMV's epilogue (it hands the norm a `PendingProjection`), and the
projection after it normalises the row in its GEMV's K loop (the norm hands it a `NormedInput`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from ..backends import triton_runs_on
from ..backends.cpu import ops as cpu_ops
from ..backends.normed_input import NormedInput
from ..backends.torch_native import ops as torch_ops
from ..distributed.parallel_state import tp_size
from .linear import LinearBase, PendingProjection, RowParallelLinear
from .quantization.quantized_activation import QuantizedActivation

logger = logging.getLogger(__name__)

NORM_LINK_SWITCH = "LMDEPLOY_FUSED_NORM"


def _ops(x: torch.Tensor):
    if x.is_cuda:
        from ..backends.cuda import ops as cuda_ops  # Triton: imported only where it runs

        return cuda_ops
    return cpu_ops if cpu_ops.available(x) else torch_ops


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        # Set by `fuse_input_quant` where the one linear reading this norm runs an 8-bit kernel.
        self.quant_dtype: torch.dtype | None = None
        # Set by `link_norms` where the one projection reading this norm may normalise itself.
        self.linked = False

    def quantize_output(self, dtype: torch.dtype) -> None:
        """From now on return the output quantised per token to `dtype` (int8 or float8), as
        a `QuantizedActivation`, by the fused Triton kernel."""
        self.quant_dtype = dtype

    def forward(
        self, x: torch.Tensor | PendingProjection, residual: torch.Tensor | None = None
    ) -> (
        torch.Tensor
        | QuantizedActivation
        | NormedInput
        | tuple[torch.Tensor | QuantizedActivation | NormedInput, torch.Tensor]
    ):
        """RMSNorm(x); with `residual`, (RMSNorm(residual + x), residual + x). A linked norm's
        one-row output may be a `NormedInput`, which only its projection's `from_hidden` reads."""
        if isinstance(x, PendingProjection):  # the add runs in the linear's epilogue
            summed = x.plus(residual)
            return self._norm(summed) if residual is None else (self._norm(summed), summed)
        if self.quant_dtype is not None:
            return self._quantized(x, residual)
        if residual is None:
            return self._norm(x)
        return _ops(x).fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _norm(self, x: torch.Tensor) -> torch.Tensor | QuantizedActivation | NormedInput:
        if self.quant_dtype is not None:
            return self._quantized(x, None)
        if self.linked and x.numel() == x.shape[-1] and triton_runs_on(x):
            return NormedInput(x, self.weight, self.eps)
        return _ops(x).rms_norm(x, self.weight, self.eps)

    def _quantized(
        self, x: torch.Tensor, residual: torch.Tensor | None
    ) -> QuantizedActivation | tuple[QuantizedActivation, torch.Tensor]:
        # Triton, as the 8-bit GEMM reading the output is (only set where that kernel runs).
        from ..backends.cuda.ops import rms_norm_quant

        q, scales, summed = rms_norm_quant(x, self.weight, self.eps, self.quant_dtype, residual)
        out = QuantizedActivation(q, scales, x.dtype)
        return out if residual is None else (out, summed)


class GemmaRMSNorm(nn.Module):
    """Gemma's RMSNorm, x * (1 + weight) in float32 (its weight is stored as an offset from
    one), alone or fused with the residual add as `RMSNorm`. Torch ops on every device: the
    fused kernels round before the weight, as Llama does, so they would not give Gemma's
    numbers in half precision."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return torch_ops.gemma_rms_norm(x, self.weight, self.eps)
        return torch_ops.fused_add_gemma_rms_norm(x, residual, self.weight, self.eps)


def link_norms(model: nn.Module) -> list[str]:
    """Link each RMSNorm between two one-row GEMVs of a decoder layer (CUDA, tp=1). The layer
    class declares `linked_norms`: each RMSNorm -> (the one linear that reads its output, the
    linear whose output alone its residual add takes). Each such producer that runs the Triton
    GEMV without a K split for one row defers its product to the norm, which runs it with the
    add in its epilogue (its hooks, LoRA's, are checked at each call). A norm is linked (its
    weight folded into its reader's: `fold_into`) where its reader runs such a GEMV, has no
    hooks and, timed at load, runs the producer-norm-reader chain no slower with the norm in
    its K loop (`choose_norm_links`: ties link, as the engine's longer chain gains from them). `LMDEPLOY_FUSED_NORM=0` links none (A/B runs). Returns the names
    of the modules changed."""
    if os.environ.get(NORM_LINK_SWITCH) == "0" or tp_size() > 1:
        return []
    from ..backends.cuda.gemv_epilogues import choose_norm_links, unsplit_gemv  # Triton

    changed, candidates = [], []
    for name, layer in model.named_modules():
        links: Mapping[str, tuple[str, str]] = getattr(layer, "linked_norms", {})
        for norm_name, (reader_name, producer_name) in links.items():
            norm, reader = _submodule(layer, norm_name), _submodule(layer, reader_name)
            producer = _submodule(layer, producer_name)
            if not isinstance(producer, RowParallelLinear) or unsplit_gemv(producer) is None:
                producer = None  # e.g. a MoE block's sum: the norm adds the residual itself
            else:
                producer.feeds_residual_add = True
                changed.append(f"{name}.{producer_name}")
            if (
                type(norm) is RMSNorm
                and norm.quant_dtype is None
                and isinstance(reader, LinearBase)
                and unsplit_gemv(reader) is not None
                and not (reader._forward_hooks or reader._forward_pre_hooks)  # LoRA reads x
            ):
                candidates.append((f"{name}.{norm_name}", norm, reader, producer))
    chosen = choose_norm_links(
        [reader for _, _, reader, _ in candidates],
        [norm.eps for _, norm, _, _ in candidates],
        [producer for *_, producer in candidates],
    )
    for (name, norm, reader, _), link in zip(candidates, chosen, strict=True):
        if link:
            fold_into(norm, reader)
            norm.linked = True
            changed.append(name)
    if changed:
        logger.info("one-row norm links: %d of %d norms, %d residual adds", sum(chosen),
                    len(candidates), len(changed) - sum(chosen))  # fmt: skip
    return changed


@torch.no_grad()
def fold_into(norm: RMSNorm, reader: LinearBase) -> None:
    """RMSNorm(x) W^T = (x / rms(x)) (W diag(w))^T: the norm's weight w goes into the one linear
    reading it, rounded once to W's dtype, and the norm keeps a weight of ones. Every path
    computes the same product (the batched ones run the norm alone, with the unit weight), and
    a one-row GEMV needs only x's rms from the norm, which its K loop sums itself."""
    reader.weight.copy_(reader.weight.float() * norm.weight.float())
    norm.weight.fill_(1.0)


def _submodule(layer: nn.Module, name: str) -> nn.Module | None:
    try:
        return layer.get_submodule(name)
    except AttributeError:  # e.g. a MoE layer's block in place of the dense MLP
        return None
