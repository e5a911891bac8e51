"""The Llama architecture over a paged KV cache: SmolLM2, Llama 2/3/3.1/3.2 and GQA variants.

Written as the math reads; every op is a layer of `layers/`, which picks the device's kernel.
Q/K/V and gate/up are one matmul each (`packed_modules_mapping`). The residual add before each
norm is fused into it: a layer takes the previous layer's MLP output and the residual stream.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..backends.attention_metadata import AttentionMetadata
from ..layers.activation import GatedActivation, SiluAndMul
from ..layers.attention import Attention
from ..layers.embedding import ParallelLMHead, TiedLMHead, VocabEmbedding
from ..layers.linear import MergedColumnParallelLinear, RowParallelLinear
from ..layers.norm import RMSNorm
from .base import CausalLM, ImageRows, KVCaches
from .config import ModelConfig
from .projections import out_projection, qkv_projection


class LlamaAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = qkv_projection(cfg, bias=cfg.attention_bias)
        self.o_proj = out_projection(cfg, bias=False)
        # Mistral is Llama with every layer windowed (a None window: Llama).
        window = cfg.sliding_window_of(layer)
        self.attn = Attention(heads, kv_heads, head_dim, sliding_window=window)

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        return self.o_proj(self.attn.from_hidden(x, self.qkv_proj, cos, sin, kv_cache, meta))


class LlamaMLP(nn.Module):
    # Gated MLPs of this layout with another gate activation (Gemma's GELU) subclass with theirs.
    act_cls: type[GatedActivation] = SiluAndMul

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        inter = cfg.intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(
            cfg.hidden_size, [inter, inter], bias=False, quant_config=cfg.quant_config
        )
        self.down_proj = RowParallelLinear(
            inter, cfg.hidden_size, bias=False, quant_config=cfg.quant_config
        )
        self.act = self.act_cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act.from_hidden(x, self.gate_up_proj))


class LlamaDecoderLayer(nn.Module):
    # Families of this layout that differ only in attention (Qwen2's biases, Qwen3's q/k norm)
    # or in the MLP (Mixtral's and Qwen3-MoE's experts) subclass with their own.
    attention_cls: type[nn.Module] = LlamaAttention
    # The checkpoint's name of the MLP module (Mixtral's: `block_sparse_moe`).
    mlp_name: str = "mlp"
    # Each norm -> (the one linear reading it, the linear whose output its residual add takes;
    # the input norm's is the previous layer's down projection, named by this layer's, of its
    # shape): at one row a backend may run the norm inside the two (`link_norms`). Names a
    # subclass lacks (a MoE block's) are skipped.
    linked_norms: ClassVar[dict[str, tuple[str, str]]] = {
        "input_layernorm": ("self_attn.qkv_proj", "mlp.down_proj"),
        "post_attention_layernorm": ("mlp.gate_up_proj", "self_attn.o_proj"),
    }

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = self.attention_cls(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.add_module(self.mlp_name, self.build_mlp(cfg, layer))

    def build_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return LlamaMLP(cfg)

    def forward(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`h`: the previous layer's MLP output (the embeddings for the first layer, with
        residual None). Returns this layer's MLP output and the residual stream before it."""
        if residual is None:
            normed, residual = self.input_layernorm(h), h
        else:
            normed, residual = self.input_layernorm(h, residual)
        h = self.self_attn(normed, cos, sin, kv_cache, meta)
        normed, residual = self.post_attention_layernorm(h, residual)
        return getattr(self, self.mlp_name)(normed), residual


class LlamaModel(nn.Module):
    # Any layer that maps (h, residual, ...) to (MLP output, residual), e.g. Gemma 2's.
    layer_cls: type[nn.Module] = LlamaDecoderLayer
    # Gemma 2 changes the final norm (x * (1 + w)) and scales the embedding.
    norm_cls: type[nn.Module] = RMSNorm

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(
            cfg.vocab_size, cfg.hidden_size, scale=self.embedding_scale(cfg)
        )
        self.layers = nn.ModuleList(self.layer_cls(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = self.norm_cls(cfg.hidden_size, cfg.rms_norm_eps)

    def embedding_scale(self, cfg: ModelConfig) -> float | None:
        return None

    def forward(
        self, input_ids, cos, sin, kv_caches: KVCaches, meta, image_rows: ImageRows | None = None
    ) -> torch.Tensor:
        h, residual = self.embed_tokens(input_ids), None
        if image_rows is not None:  # a vision-language prompt: images' positions take theirs
            h = h.index_copy(0, image_rows.index, image_rows.rows.to(h.dtype))
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            h, residual = layer(h, residual, cos, sin, kv_cache, meta)
        return self.norm(h, residual)[0]


class LlamaForCausalLM(CausalLM):
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    quantized_input_producers = {
        "input_layernorm": "self_attn.qkv_proj",
        "post_attention_layernorm": "mlp.gate_up_proj",
        "mlp.act": "mlp.down_proj",
    }
    model_cls: type[LlamaModel] = LlamaModel

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.model = self.model_cls(cfg)
        self.lm_head = (
            TiedLMHead(self.model.embed_tokens)
            if cfg.tie_word_embeddings
            else ParallelLMHead(cfg.hidden_size, cfg.vocab_size)
        )

    def forward(
        self, input_ids, cos, sin, kv_caches: KVCaches, meta, image_rows: ImageRows | None = None
    ) -> torch.Tensor:
        if image_rows is None:  # families whose model predates images take no such argument
            return self.model(input_ids, cos, sin, kv_caches, meta)
        return self.model(input_ids, cos, sin, kv_caches, meta, image_rows)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
