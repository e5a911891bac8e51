"""The CPU's one-row decode step: one sequence decoding one token runs its decoder layers in
one C call (`backends/cpu/fused_decode.py`) instead of layer by layer.

It takes a step only where everything in it is what the C call computes: a Llama-layout model
(`LlamaDecoderLayer` with RMSNorm, rotary attention without window or soft cap, a SiLU gated
MLP) whose linears have no bias and no hook (LoRA) and run on kernels it reads, float32
unquantized caches, one sequence and one token. The builder decides the rest (CPU, float32,
tp=1, no LoRA, no KV quantization; `LMDEPLOY_CPU_FUSED_DECODE=0` turns it off). The plan
(every pointer) is built at the first such step; a model it does not fit is looked at once.
With `repack` (the builder's, `LMDEPLOY_CPU_REPACK`), the plan reads Q4 weights from a copy
repacked 16 rows a group where it can.
"""

from __future__ import annotations

import torch

from ..backends.attention_metadata import AttentionMetadata
from ..backends.cpu import fused_decode
from ..layers.activation import SiluAndMul
from ..layers.linear import LinearBase
from ..layers.norm import RMSNorm
from ..models.base import CausalLM, KVCaches
from ..models.llama import LlamaAttention, LlamaDecoderLayer, LlamaMLP, LlamaModel


def _kernel_of(linear: LinearBase) -> torch.nn.Module | None:
    """The linear's kernel module, where the fused step reads it (no hook sits on it)."""
    if linear._forward_hooks or linear._forward_pre_hooks:
        return None
    packed = linear.packed
    return packed if packed is not None and fused_decode.supports_linear(packed) else None


def _layer_weights(
    layer: torch.nn.Module, kv_cache: tuple[torch.Tensor, ...]
) -> fused_decode.LayerWeights | None:
    if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention:
        return None
    mlp, attn = getattr(layer, layer.mlp_name), layer.self_attn.attn
    if type(mlp) is not LlamaMLP or type(mlp.act) is not SiluAndMul:
        return None
    opts = attn.options
    if opts.sliding_window is not None or opts.logit_softcap is not None or len(kv_cache) != 2:
        return None
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if any(type(norm) is not RMSNorm or norm.quant_dtype is not None for norm in norms):
        return None
    linears = (layer.self_attn.qkv_proj, layer.self_attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
    kernels = [_kernel_of(linear) for linear in linears]
    if any(kernel is None for kernel in kernels):
        return None
    k_cache, v_cache = kv_cache
    if not (k_cache.dtype == v_cache.dtype == torch.float32 and k_cache.is_contiguous()):
        return None
    return fused_decode.LayerWeights(
        norms[0].weight.detach(), norms[1].weight.detach(), *kernels, k_cache, v_cache
    )


def plan_for(
    model: CausalLM, kv_caches: KVCaches, repack: bool = True
) -> fused_decode.DecodeLayers | None:
    """The fused step over `model`'s layers and caches, or None where one does not fit."""
    inner = getattr(model, "model", None)
    if type(inner) is not LlamaModel or not fused_decode.available():
        return None
    layers = [
        _layer_weights(layer, cache) for layer, cache in zip(inner.layers, kv_caches, strict=True)
    ]
    if not layers or any(layer is None for layer in layers):
        return None
    first = inner.layers[0]
    eps = {
        norm.eps
        for layer in inner.layers
        for norm in (layer.input_layernorm, layer.post_attention_layernorm)
    }
    scales = {layer.self_attn.attn.scale for layer in inner.layers}
    if len(eps) != 1 or len(scales) != 1:
        return None
    heads, kv_heads, head_dim = first.self_attn.attn.heads
    shape = fused_decode.DecoderShape(
        hidden=model.config.hidden_size,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        inter=first.mlp.down_proj.input_size,
        block_size=kv_caches[0][0].shape[1],
        eps=eps.pop(),
        scale=scales.pop(),
    )
    return fused_decode.DecodeLayers(shape, layers, repack=repack)


class CpuDecodeStep:
    """The runner's fused one-row decode step over one model (the plan built at first use)."""

    def __init__(self, model: CausalLM, kv_caches: KVCaches, repack: bool = True) -> None:
        self._model, self._kv_caches, self._repack = model, kv_caches, repack
        self._plan: fused_decode.DecodeLayers | None = None
        self._looked = False
        self.steps = 0  # steps it ran: where a benchmark or a test sees that it did

    def run(
        self, input_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor | None:
        """Hidden states [1, hidden] of the step's token, or None (the caller runs the model)
        where the step or the model is not one it takes."""
        if not meta.is_decode or len(meta.query_lens) != 1 or cos.dtype != torch.float32:
            return None
        if not self._looked:
            self._plan = plan_for(self._model, self._kv_caches, self._repack)
            self._looked = True
        if self._plan is None:
            return None
        inner = self._model.model
        self.steps += 1
        h, residual = self._plan(
            inner.embed_tokens(input_ids),
            cos,
            sin,
            meta.slot_mapping,
            meta.block_tables,
            meta.context_lens_list[0],
        )
        return inner.norm(h, residual)[0]
