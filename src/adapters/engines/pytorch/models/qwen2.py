"""Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`): Llama's layout with a bias on the query, key and
value projections (never on the output projection), whatever `attention_bias` says."""

from __future__ import annotations

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from ..layers.attention import Attention
from .config import ModelConfig
from .llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from .projections import out_projection, qkv_projection


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = qkv_projection(cfg, bias=True)
        self.o_proj = out_projection(cfg, bias=False)
        self.attn = Attention(
            heads, kv_heads, head_dim, sliding_window=cfg.sliding_window_of(layer)
        )

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        return self.o_proj(self.attn.from_hidden(x, self.qkv_proj, cos, sin, kv_cache, meta))


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention_cls = Qwen2Attention


class Qwen2Model(LlamaModel):
    layer_cls = Qwen2DecoderLayer


class Qwen2ForCausalLM(LlamaForCausalLM):
    model_cls = Qwen2Model
