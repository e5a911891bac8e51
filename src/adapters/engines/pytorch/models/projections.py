"""The attention projections every decoder family builds the same way from its config: q/k/v
as one column-parallel matmul of the config's head counts, the output as a row-parallel one,
both quantized as the checkpoint is. Only the bias (and InternLM2's grouped q/k/v layout)
differ between families, so the caller names them where it reads as the model's math."""

from __future__ import annotations

from ..layers.linear import GroupedQKVParallelLinear, QKVParallelLinear, RowParallelLinear
from .config import ModelConfig


def qkv_projection(cfg: ModelConfig, *, bias: bool, grouped: bool = False) -> QKVParallelLinear:
    """x -> [q | k | v] of `cfg`'s heads; `grouped`: InternLM2's per-KV-group interleaved
    weight (`wqkv`)."""
    cls = GroupedQKVParallelLinear if grouped else QKVParallelLinear
    return cls(
        cfg.hidden_size,
        cfg.head_dim,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        bias=bias,
        quant_config=cfg.quant_config,
    )


def out_projection(cfg: ModelConfig, *, bias: bool) -> RowParallelLinear:
    """The attention output (heads * head_dim) -> hidden size."""
    return RowParallelLinear(
        cfg.num_attention_heads * cfg.head_dim,
        cfg.hidden_size,
        bias=bias,
        quant_config=cfg.quant_config,
    )
