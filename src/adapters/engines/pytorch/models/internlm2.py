"""InternLM2 and InternLM2.5 (`InternLM2ForCausalLM`): Llama's math under InternLM's names.

The checkpoint packs Q/K/V as one `wqkv` laid out by KV group (each group's query heads, then
its key head, then its value head); `GroupedQKVParallelLinear` loads it into the plain
[q; k; v] layout. `bias` in its config.json puts a bias on `wqkv` and `wo`. Rotary scaling
(`dynamic`, `linear`) is the runner's, as for Llama. The residual add before each norm is
fused into it, as in `llama.py`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from ..layers.activation import SiluAndMul
from ..layers.attention import Attention
from ..layers.embedding import ParallelLMHead, TiedLMHead, VocabEmbedding
from ..layers.linear import MergedColumnParallelLinear, RowParallelLinear
from ..layers.norm import RMSNorm
from .base import CausalLM, KVCaches
from .config import ModelConfig
from .projections import out_projection, qkv_projection


class InternLM2Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.wqkv = qkv_projection(cfg, bias=cfg.attention_bias, grouped=True)
        self.wo = out_projection(cfg, bias=cfg.attention_bias)
        self.attn = Attention(heads, kv_heads, head_dim)

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        return self.wo(self.attn.from_hidden(x, self.wqkv, cos, sin, kv_cache, meta))


class InternLM2FeedForward(nn.Module):
    """w2(silu(w1 x) * w3 x), w1 and w3 as one matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        inter = cfg.intermediate_size
        self.w13 = MergedColumnParallelLinear(
            cfg.hidden_size, [inter, inter], bias=False, quant_config=cfg.quant_config
        )
        self.w2 = RowParallelLinear(
            inter, cfg.hidden_size, bias=False, quant_config=cfg.quant_config
        )
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act.from_hidden(x, self.w13))


class InternLM2DecoderLayer(nn.Module):
    # As Llama's (`LlamaDecoderLayer.linked_norms`).
    linked_norms: ClassVar[dict[str, tuple[str, str]]] = {
        "attention_norm": ("attention.wqkv", "feed_forward.w2"),
        "ffn_norm": ("feed_forward.w13", "attention.wo"),
    }

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = InternLM2Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.feed_forward = InternLM2FeedForward(cfg)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`h`: the previous layer's feed-forward output (the embeddings for the first layer,
        with residual None). Returns this layer's and the residual stream before it."""
        if residual is None:
            normed, residual = self.attention_norm(h), h
        else:
            normed, residual = self.attention_norm(h, residual)
        h = self.attention(normed, cos, sin, kv_cache, meta)
        normed, residual = self.ffn_norm(h, residual)
        return self.feed_forward(normed), residual


class InternLM2Model(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok_embeddings = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            InternLM2DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        h, residual = self.tok_embeddings(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta)
        return self.norm(h, residual)[0]


class InternLM2ForCausalLM(CausalLM):
    packed_modules_mapping = {
        "feed_forward.w1.": ("feed_forward.w13.", 0),
        "feed_forward.w3.": ("feed_forward.w13.", 1),
    }
    quantized_input_producers = {
        "attention_norm": "attention.wqkv",
        "ffn_norm": "feed_forward.w13",
        "feed_forward.act": "feed_forward.w2",
    }

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.model = InternLM2Model(cfg)
        self.output = (
            TiedLMHead(self.model.tok_embeddings)
            if cfg.tie_word_embeddings
            else ParallelLMHead(cfg.hidden_size, cfg.vocab_size)
        )

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        return self.model(input_ids, cos, sin, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.output(hidden)
