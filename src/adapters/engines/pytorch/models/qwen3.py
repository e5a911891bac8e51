"""Qwen3 (`Qwen3ForCausalLM`): Llama's layout where each query and key head is RMS-normalized
over its own `head_dim` before rotary; `head_dim` is the config's (not hidden / heads), and
`attention_bias` (off in the released models) applies to all four projections."""

from __future__ import annotations

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from ..layers.attention import Attention
from ..layers.norm import RMSNorm
from .config import ModelConfig
from .llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from .projections import out_projection, qkv_projection


class Qwen3Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.qkv_proj = qkv_projection(cfg, bias=bias)
        self.o_proj = out_projection(cfg, bias=bias)
        self.q_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(head_dim, cfg.rms_norm_eps)
        self.attn = Attention(
            heads, kv_heads, head_dim, sliding_window=cfg.sliding_window_of(layer)
        )

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        qk_norm = (self.q_norm, self.k_norm)  # each query and key head, before the rotary
        return self.o_proj(self.attn(qkv, cos, sin, kv_cache, meta, qk_norm))


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen3Attention


class Qwen3Model(LlamaModel):
    layer_cls = Qwen3DecoderLayer


class Qwen3ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen3Model
