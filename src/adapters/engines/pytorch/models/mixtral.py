"""Mixtral: Llama's attention with a sparse mixture of SwiGLU experts as every layer's MLP.

The router picks the top `num_experts_per_tok` experts of each token and always renormalizes
their softmax weights over the picked ones. Checkpoints name the MoE block `block_sparse_moe`
and an expert's projections w1 (gate), w3 (up), w2 (down); they load into stacked weights
(`layers/moe.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers.embedding import ParallelLMHead, TiedLMHead, VocabEmbedding
from ..layers.moe import SparseMoeBlock, expert_weights_mapping
from ..layers.norm import RMSNorm
from .base import CausalLM, KVCaches
from .config import ModelConfig
from .llama import LlamaAttention


class MixtralDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.block_sparse_moe = SparseMoeBlock(
            cfg.num_experts,
            cfg.num_experts_per_tok,
            cfg.hidden_size,
            cfg.intermediate_size,
            renormalize=True,
        )

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As Llama's layer: the previous layer's MLP output and the residual stream in (None
        at the first layer), this layer's MoE output and the residual stream before it out."""
        if residual is None:
            normed, residual = self.input_layernorm(h), h
        else:
            normed, residual = self.input_layernorm(h, residual)
        h = self.self_attn(normed, cos, sin, kv_cache, meta)
        normed, residual = self.post_attention_layernorm(h, residual)
        return self.block_sparse_moe(normed), residual


class MixtralModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            MixtralDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        h, residual = self.embed_tokens(input_ids), None
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta)
        return self.norm(h, residual)[0]


class MixtralForCausalLM(CausalLM):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.packed_modules_mapping = {
            **expert_weights_mapping(cfg.num_experts, "block_sparse_moe", "w1", "w3", "w2"),
            "q_proj": ("qkv_proj", "q"),
            "k_proj": ("qkv_proj", "k"),
            "v_proj": ("qkv_proj", "v"),
        }
        self.model = MixtralModel(cfg)
        self.lm_head = (
            TiedLMHead(self.model.embed_tokens)
            if cfg.tie_word_embeddings
            else ParallelLMHead(cfg.hidden_size, cfg.vocab_size)
        )

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta) -> torch.Tensor:
        return self.model(input_ids, cos, sin, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
