"""The shape of a model of any family, from an HF config.json dict (GGUF metadata arrives
translated to one by its loader). Fields that only some families have default to off."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..layers.quantization import QuantConfig, resolve_quant_config


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "float32"
    architectures: tuple[str, ...] = field(default=("LlamaForCausalLM",))
    sliding_window: int | None = None  # the attention span of windowed layers (Mistral, Gemma 2)
    # Per layer 'sliding_attention' or 'full_attention' (transformers 5's `layer_types`);
    # None: every layer is windowed when there is a window.
    layer_types: tuple[str, ...] | None = None
    attn_logit_softcapping: float | None = None  # Gemma 2: scores capped through a tanh
    final_logit_softcapping: float | None = None  # Gemma 2: logits likewise
    query_pre_attn_scalar: float | None = None  # Gemma 2: the attention scale is its -1/2 power
    partial_rotary_factor: float = 1.0  # share of each head's dims that rotary turns (Phi)
    # Mixture of experts (Mixtral, Qwen3-MoE); num_experts 0: a dense model.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0  # an expert's; 0: intermediate_size (Mixtral)
    norm_topk_prob: bool = False  # Qwen3-MoE: renormalize the top-k weights (Mixtral always does)
    decoder_sparse_step: int = 1  # Qwen3-MoE: every n-th layer is sparse...
    mlp_only_layers: tuple[int, ...] = ()  # ...except these, dense
    # The linears' quantization (AWQ, GPTQ, ...); None: dense. Model files hand it to every
    # linear they build and never look inside.
    quant_config: QuantConfig | None = None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], model_format: str | None = None) -> ModelConfig:
        """`model_format`: the engine's, for a quantized checkpoint that does not say so
        itself (`layers/quantization/config.py`)."""
        heads = cfg["num_attention_heads"]
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        rope = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        theta = cfg.get("rope_theta") or (rope or {}).get("rope_theta") or 10000.0
        if rope and rope.get("rope_type", rope.get("type")) in (None, "default"):
            rope = None
        window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=float(theta),
            rope_scaling=rope,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            attention_bias=cfg.get("attention_bias", cfg.get("bias", False)),  # InternLM2: bias
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32"),
            architectures=tuple(cfg.get("architectures") or ("LlamaForCausalLM",)),
            sliding_window=window,
            partial_rotary_factor=float(
                cfg.get("partial_rotary_factor")
                or (cfg.get("rope_parameters") or {}).get("partial_rotary_factor", 1.0)
            ),
            num_experts=cfg.get("num_experts") or cfg.get("num_local_experts") or 0,
            num_experts_per_tok=cfg.get("num_experts_per_tok") or 0,
            moe_intermediate_size=cfg.get("moe_intermediate_size") or 0,
            norm_topk_prob=bool(cfg.get("norm_topk_prob")),
            decoder_sparse_step=cfg.get("decoder_sparse_step") or 1,
            mlp_only_layers=tuple(cfg.get("mlp_only_layers") or ()),
            layer_types=tuple(cfg["layer_types"]) if cfg.get("layer_types") else None,
            attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
            final_logit_softcapping=cfg.get("final_logit_softcapping"),
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            quant_config=resolve_quant_config(cfg, model_format),
        )

    def sliding_window_of(self, layer: int) -> int | None:
        """The window of layer `layer`'s attention, None where it sees the whole context."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes
