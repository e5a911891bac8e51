"""The InternLM2 family on a tiny random checkpoint: greedy ids equal transformers'.

transformers has no InternLM2 class, and InternLM2's math is Llama's under other names with
Q/K/V packed by KV group. So the reference is a transformers Llama whose weights are re-packed
into an InternLM2 checkpoint (InternLM2's names, layout and config.json keys); our engine runs
that checkpoint and must produce the Llama's greedy ids. The re-packing itself is checked
against an unpacking of `wqkv`'s output written the way InternLM2's published modeling code
reads it.
"""

from __future__ import annotations

import pytest
import torch
import transformers

from lmdeploy.adapters.engines.pytorch.layers.linear import GroupedQKVParallelLinear
from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
from tests.conftest import LONG_TEXT

from .tiny_models import (
    ENGINE_CONFIGS,
    VOCAB_SIZE,
    assert_greedy_ids_match,
    prompts,
    reference_greedy,
    save_converted_checkpoint,
    tiny_model,
)

HEADS, KV_HEADS, HIDDEN = 8, 2, 128
HEAD_DIM = HIDDEN // HEADS

# Llama's name fragment -> InternLM2's, for every tensor but Q/K/V.
RENAMES = {
    "model.embed_tokens.": "model.tok_embeddings.",
    "self_attn.o_proj.": "attention.wo.",
    "mlp.gate_proj.": "feed_forward.w1.",
    "mlp.up_proj.": "feed_forward.w3.",
    "mlp.down_proj.": "feed_forward.w2.",
    "input_layernorm.": "attention_norm.",
    "post_attention_layernorm.": "ffn_norm.",
    "lm_head.": "output.",
}


def pack_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[q; k; v] rows (weight or bias) into InternLM2's layout: per KV head, its group's query
    heads, then the key head, then the value head."""
    rest = q.shape[1:]
    groups = [
        q.reshape(KV_HEADS, -1, HEAD_DIM, *rest),
        k.reshape(KV_HEADS, 1, HEAD_DIM, *rest),
        v.reshape(KV_HEADS, 1, HEAD_DIM, *rest),
    ]
    return torch.cat(groups, dim=1).reshape(-1, *rest)


def to_internlm2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in state.items():
        if ".self_attn.q_proj." in name:
            k, v = (state[name.replace("q_proj", p)] for p in ("k_proj", "v_proj"))
            out[name.replace("self_attn.q_proj", "attention.wqkv")] = pack_wqkv(tensor, k, v)
        elif ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        else:
            for old, new in RENAMES.items():
                name = name.replace(old, new)
            out[name] = tensor
    return out


def internlm2_config(llama: transformers.LlamaConfig, bias: bool) -> dict:
    """config.json as InternLM2's checkpoints write it (`bias`, not `attention_bias`)."""
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "bias": bias,
        "hidden_act": "silu",
        "hidden_size": llama.hidden_size,
        "intermediate_size": llama.intermediate_size,
        "max_position_embeddings": llama.max_position_embeddings,
        "num_attention_heads": llama.num_attention_heads,
        "num_hidden_layers": llama.num_hidden_layers,
        "num_key_value_heads": llama.num_key_value_heads,
        "rms_norm_eps": llama.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "vocab_size": llama.vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


def llama_config(bias: bool) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=1024,
        attention_bias=bias,  # InternLM2's `bias`: on wqkv and wo, as Llama's on q/k/v/o
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )


def _checkpoint(tmp_path_factory, hf_tokenizer, bias: bool):
    config = llama_config(bias)
    llama = tiny_model(config)
    directory = tmp_path_factory.mktemp("tiny-internlm2")
    state = to_internlm2(llama.state_dict())
    save_converted_checkpoint(internlm2_config(config, bias), state, directory, hf_tokenizer)
    prompt_ids = prompts(hf_tokenizer, LONG_TEXT)
    return directory, prompt_ids, reference_greedy(llama, prompt_ids), llama, state


@pytest.fixture(scope="module")
def tiny_internlm2(tmp_path_factory, hf_tokenizer):
    """As InternLM2 and 2.5 ship: no bias."""
    return _checkpoint(tmp_path_factory, hf_tokenizer, bias=False)


@pytest.fixture(scope="module")
def tiny_internlm2_bias(tmp_path_factory, hf_tokenizer):
    return _checkpoint(tmp_path_factory, hf_tokenizer, bias=True)


def test_repacked_wqkv_reads_back_as_internlm2_code_reads_it(tiny_internlm2_bias):
    """InternLM2's attention: `wqkv(x)` viewed as (kv heads, group + 2, head_dim); the first
    `group` rows are that KV head's queries, then its key, then its value."""
    *_, llama, state = tiny_internlm2_bias
    attn = llama.model.layers[0].self_attn
    x = torch.randn(3, HIDDEN)
    qkv = torch.nn.functional.linear(
        x,
        state["model.layers.0.attention.wqkv.weight"],
        state.get("model.layers.0.attention.wqkv.bias"),
    )
    qkv = qkv.view(3, KV_HEADS, HEADS // KV_HEADS + 2, HEAD_DIM)
    with torch.no_grad():
        torch.testing.assert_close(qkv[:, :, :-2].reshape(3, -1), attn.q_proj(x), rtol=0, atol=0)
        torch.testing.assert_close(qkv[:, :, -2].reshape(3, -1), attn.k_proj(x), rtol=0, atol=0)
        torch.testing.assert_close(qkv[:, :, -1].reshape(3, -1), attn.v_proj(x), rtol=0, atol=0)


def test_wqkv_loads_into_the_q_k_v_shards(tiny_internlm2_bias):
    *_, llama, state = tiny_internlm2_bias
    attn = llama.model.layers[0].self_attn
    layer = GroupedQKVParallelLinear(HIDDEN, HEAD_DIM, HEADS, KV_HEADS, bias=True)
    for kind in ("weight", "bias"):
        param = getattr(layer, kind)
        layer.weight_loader(param, state[f"model.layers.0.attention.wqkv.{kind}"])
        expected = torch.cat(
            [getattr(getattr(attn, p), kind) for p in ("q_proj", "k_proj", "v_proj")]
        )
        torch.testing.assert_close(param.data, expected, rtol=0, atol=0)


@pytest.mark.parametrize("options", ENGINE_CONFIGS.values(), ids=ENGINE_CONFIGS.keys())
def test_greedy_ids_match_transformers_llama(tiny_internlm2, options):
    directory, prompt_ids, reference, *_ = tiny_internlm2
    assert_greedy_ids_match(directory, reference, prompt_ids, **options)


def test_greedy_ids_match_with_bias(tiny_internlm2_bias):
    directory, prompt_ids, reference, *_ = tiny_internlm2_bias
    assert_greedy_ids_match(directory, reference, prompt_ids, **ENGINE_CONFIGS["block16"])


def test_internlm2_5_dynamic_rope_is_read():
    """InternLM2.5's config.json spells its rope scaling the old way (`type`)."""
    cfg = ModelConfig.from_hf(
        internlm2_config(llama_config(bias=False), bias=False)
        | {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 1000000.0}
    )
    assert cfg.rope_scaling == {"type": "dynamic", "factor": 2.0}
    assert (cfg.rope_theta, cfg.attention_bias) == (1000000.0, False)
