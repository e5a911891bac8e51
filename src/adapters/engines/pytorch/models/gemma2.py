"""The Gemma 2 architecture over a paged KV cache.

Llama's layout with Gemma's changes: every layer's attention and MLP output is normed again
before the residual add (four norms a layer, Gemma's x * (1 + w)), layers alternate a sliding
window and the whole context (`ModelConfig.sliding_window_of`), attention scores and the final
logits are soft-capped, the scale is `query_pre_attn_scalar ** -0.5`, the embedding is scaled
by sqrt(hidden_size), the MLP is gated by GELU-tanh and the LM head is (as a rule) the
embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from ..layers.activation import GeluTanhAndMul, soft_cap
from ..layers.attention import Attention
from ..layers.norm import GemmaRMSNorm
from .config import ModelConfig
from .llama import LlamaForCausalLM, LlamaMLP, LlamaModel
from .projections import out_projection, qkv_projection


def _layer_window(cfg: ModelConfig, layer: int) -> int | None:
    """The config's `layer_types` where it has them; checkpoints saved before transformers
    wrote them alternate from a windowed layer 0, as transformers then did."""
    if cfg.layer_types is None and layer % 2 == 1:
        return None
    return cfg.sliding_window_of(layer)


class Gemma2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = qkv_projection(cfg, bias=cfg.attention_bias)
        self.o_proj = out_projection(cfg, bias=cfg.attention_bias)
        self.attn = Attention(
            heads,
            kv_heads,
            head_dim,
            scale=(cfg.query_pre_attn_scalar or head_dim) ** -0.5,
            sliding_window=_layer_window(cfg, layer),
            logit_softcap=cfg.attn_logit_softcapping,
        )

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        return self.o_proj(self.attn.from_hidden(x, self.qkv_proj, cos, sin, kv_cache, meta))


class Gemma2MLP(LlamaMLP):
    act_cls = GeluTanhAndMul


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        hidden, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(hidden, eps)
        self.self_attn = Gemma2Attention(cfg, layer)
        self.post_attention_layernorm = GemmaRMSNorm(hidden, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(hidden, eps)
        self.mlp = Gemma2MLP(cfg)
        self.post_feedforward_layernorm = GemmaRMSNorm(hidden, eps)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`h`: the previous layer's normed MLP output (the embeddings for the first layer,
        with residual None). Returns this layer's normed MLP output and the residual stream
        before it."""
        if residual is None:
            normed, residual = self.input_layernorm(h), h
        else:
            normed, residual = self.input_layernorm(h, residual)
        h = self.post_attention_layernorm(self.self_attn(normed, cos, sin, kv_cache, meta))
        normed, residual = self.pre_feedforward_layernorm(h, residual)
        return self.post_feedforward_layernorm(self.mlp(normed)), residual


class Gemma2Model(LlamaModel):
    layer_cls = Gemma2DecoderLayer
    norm_cls = GemmaRMSNorm

    def embedding_scale(self, cfg: ModelConfig) -> float:
        return cfg.hidden_size**0.5


class Gemma2ForCausalLM(LlamaForCausalLM):
    model_cls = Gemma2Model
    # Its post-attention norm feeds the residual add, not the MLP.
    quantized_input_producers = {
        "input_layernorm": "self_attn.qkv_proj",
        "pre_feedforward_layernorm": "mlp.gate_up_proj",
        "mlp.act": "mlp.down_proj",
    }

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head(hidden), self.config.final_logit_softcapping)
