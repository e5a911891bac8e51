"""The Llama architecture over a paged KV cache: SmolLM2, Llama 2/3/3.1/3.2 and GQA variants.

Written as the math reads. Q/K/V and gate/up are fused into one matmul each; `load_weights`
takes HF-named tensors and places them into the fused parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_ops
from .attention import AttentionMetadata, paged_attention
from .model_config import LlamaConfig
from .rotary import apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from .cuda_ops import rms_norm

            return rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.qkv_proj = nn.Linear(
            cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias
        )
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.scale = self.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        kv_written = False
        if qkv.is_cuda:
            from .cuda_ops import rotary_qk

            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(-1, self.num_heads, self.head_dim)
            k = k.view(-1, self.num_kv_heads, self.head_dim)
            rotary_qk(q, k, cos, sin)
        elif cpu_ops.available(qkv) and cpu_ops.rotary_write_kv(
            qkv, cos, sin, *kv_cache, meta.slot_mapping, *self._heads()
        ):
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q = q.view(-1, self.num_heads, self.head_dim)
            k = k.view(-1, self.num_kv_heads, self.head_dim)
            kv_written = True
        else:
            qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
            # One rotary pass over the query and key heads together.
            qk = apply_rotary(
                qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim), cos, sin
            )
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale, kv_written)
        return self.o_proj(out.flatten(1))

    def _heads(self) -> tuple[int, int, int]:
        return self.num_heads, self.num_kv_heads, self.head_dim


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if gate_up.is_cuda:
            from .cuda_ops import silu_and_mul

            return self.down_proj(silu_and_mul(gate_up))
        # In place (cpu_ops.silu_and_mul): the projection's output is ours to overwrite, and a
        # fresh [tokens, 2 x intermediate] buffer per op was a tenth of a CPU prefill.
        return self.down_proj(cpu_ops.silu_and_mul(gate_up))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv_cache, meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_fused(
        self, h: torch.Tensor, residual: torch.Tensor | None, cos, sin, kv_cache, meta, ops
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each residual add fused into the norm that follows it (`ops`: cuda_ops or cpu_ops):
        `h` is the previous layer's MLP output (the embeddings for the first layer, with
        residual None). Returns this layer's MLP output and the residual stream before it
        (the numbers of `forward`)."""
        norm = self.input_layernorm
        if residual is None:
            normed, residual = ops.rms_norm(h, norm.weight, norm.eps), h
        else:
            normed, residual = ops.fused_add_rms_norm(h, residual, norm.weight, norm.eps)
        h = self.self_attn(normed, cos, sin, kv_cache, meta)
        norm = self.post_attention_layernorm
        normed, residual = ops.fused_add_rms_norm(h, residual, norm.weight, norm.eps)
        return self.mlp(normed), residual


def _fused_ops(x: torch.Tensor):
    """The fused elementwise kernels for x's device (Triton on CUDA, C on a CPU in float32),
    or None: the layers then run their torch ops."""
    if x.is_cuda:
        from . import cuda_ops

        return cuda_ops
    return cpu_ops if cpu_ops.available(x) else None


# HF name fragment -> (our fused parameter, shard index); shard order fixes the slice.
_STACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states of every new token: [num_tokens, hidden_size]."""
        x = self.embed_tokens(input_ids)
        ops = _fused_ops(x)
        if ops is not None:
            residual = None
            for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
                x, residual = layer.forward_fused(x, residual, cos, sin, kv_cache, meta, ops)
            return ops.fused_add_rms_norm(x, residual, self.norm.weight, self.norm.eps)[0]
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, kv_cache, meta)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return F.linear(hidden, self.embed_tokens.weight).float()
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named tensors in; returns the names of the parameters that were filled."""
        params = dict(self.named_parameters())
        cfg = self.config
        sizes = {
            "qkv_proj": [cfg.num_attention_heads * cfg.head_dim]
            + [cfg.num_key_value_heads * cfg.head_dim] * 2,
            "gate_up_proj": [cfg.intermediate_size] * 2,
        }
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name or (name == "lm_head.weight" and self.lm_head is None):
                continue
            for fragment, (fused, shard) in _STACKED.items():
                if fragment in name:
                    target = name.replace(fragment, fused)
                    offset = sum(sizes[fused][:shard])
                    params[target].data[offset : offset + sizes[fused][shard]].copy_(tensor)
                    loaded.add(f"{target}#{shard}")
                    break
            else:
                if name not in params:
                    raise KeyError(f"unexpected weight {name!r} for {type(self).__name__}")
                params[name].data.copy_(tensor)
                loaded.add(name)
        return loaded

    def expected_weights(self) -> set[str]:
        names = set()
        for name, _ in self.named_parameters():
            fused = next((f for f, _ in _STACKED.values() if f in name), None)
            shards = 3 if fused == "qkv_proj" else 2
            names.update({f"{name}#{i}" for i in range(shards)} if fused else {name})
        return names
