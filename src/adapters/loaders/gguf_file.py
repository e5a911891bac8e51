"""Weights and model shape from a GGUF file, dequantized to float32 with the `gguf` package,
or, for the types the caller names, kept as the file's quantized blocks (`QuantizedWeight`).

The metadata becomes an HF-style config dict (llama.cpp's keys under HF's names), the tensor
names HF's, so the engine reads a GGUF file as it reads an HF directory.

For Llama, llama.cpp's converter permutes Q and K rows for its interleaved rotary layout; we
undo that so the tensors match the HF (rotate-half) layout our model and transformers use.
Qwen2 runs rotate-half rotary in llama.cpp too (NEOX), so its rows are stored as HF has them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SUPPORTED_TYPES = {
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
}

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}


@dataclass(frozen=True)
class QuantizedWeight:
    """A GGUF matrix kept quantized: `blocks` uint8 [rows, bytes per row], each row the file's
    blocks of `qtype` (a GGML type name, e.g. 'Q4_1') along the `cols` inputs."""

    qtype: str
    blocks: torch.Tensor
    cols: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.cols)

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, cols], through the `gguf` package (llama.cpp's reference math)."""
        import gguf

        values = gguf.quants.dequantize(self.blocks.numpy(), gguf.GGMLQuantizationType[self.qtype])
        return torch.from_numpy(np.array(values, dtype=np.float32).reshape(self.shape))


def _reader(path: Path):
    import gguf  # imported lazily: only GGUF users pay for it

    return gguf.GGUFReader(str(path))


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


class GGUFCheckpoint:
    """One GGUF file, parsed once (parsing the metadata of a 49k-token vocabulary takes seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reader = _reader(path)
        self.config = read_config(self.reader, path)

    def weights(
        self, keep_quantized: frozenset[str] = frozenset()
    ) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        return iter_weights(self.reader, self.config, keep_quantized)


# GGUF `general.architecture` -> the HF architecture of the same math
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# HF architectures whose Q/K rows llama.cpp's converter permuted
_PERMUTED_QK = {"LlamaForCausalLM"}


def read_config(reader, path: Path) -> dict[str, Any]:
    """The HF config.json equivalent of the file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"{path.name}: GGUF architecture {arch!r} is not supported; "
            f"supported: {', '.join(sorted(_ARCHITECTURES))}"
        )
    heads = _field(reader, f"{arch}.attention.head_count")
    hidden = _field(reader, f"{arch}.embedding_length")
    names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens"))
    return {
        "architectures": [_ARCHITECTURES[arch]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _field(reader, f"{arch}.feed_forward_length"),
        "num_hidden_layers": _field(reader, f"{arch}.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _field(reader, f"{arch}.attention.head_count_kv", heads),
        "head_dim": _field(reader, f"{arch}.rope.dimension_count", hidden // heads),
        "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        "max_position_embeddings": _field(reader, f"{arch}.context_length", 4096),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
    }


def hf_name(gguf_name: str) -> str:
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
    stem, kind = gguf_name.rsplit(".", 1)
    prefix = "" if stem == "output" else "model."
    return f"{prefix}{_GLOBAL_NAMES[stem]}.{kind}"


def _unpermute(w: np.ndarray, num_heads: int) -> np.ndarray:
    rows = w.shape[0]
    return (
        w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def dequantize(tensor) -> np.ndarray:
    """One GGUF tensor as float32 in PyTorch's (row-major, reversed GGML) shape."""
    import gguf

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"GGUF tensor {tensor.name} has type {kind}, which is not supported")
    shape = tuple(int(d) for d in reversed(tensor.shape))
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.array(values, dtype=np.float32, copy=True).reshape(shape)


def _permuted_heads(name: str, config: dict[str, Any]) -> int | None:
    """The head count of a Q or K weight whose rows llama.cpp permuted; None for the rest."""
    if config["architectures"][0] not in _PERMUTED_QK:
        return None
    if name.endswith("q_proj.weight"):
        return config["num_attention_heads"]
    if name.endswith("k_proj.weight"):
        return config["num_key_value_heads"]
    return None


def iter_weights(
    reader, config: dict[str, Any], keep_quantized: frozenset[str] = frozenset()
) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
    """HF-named weights: float32, or QuantizedWeight for matrices of a type in `keep_quantized`."""
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        kind = tensor.tensor_type.name
        keep = kind in keep_quantized and len(tensor.shape) == 2
        # A quantized matrix's rows are whole runs of blocks, so llama.cpp's row permutation
        # of Q and K is undone on them as on float rows.
        array = np.asarray(tensor.data) if keep else dequantize(tensor)
        heads = _permuted_heads(name, config)
        if heads is not None:
            array = _unpermute(array, heads)
        if keep:
            blocks = torch.from_numpy(np.array(array, dtype=np.uint8, copy=True))
            yield name, QuantizedWeight(kind, blocks, int(tensor.shape[0]))
        else:
            yield name, torch.from_numpy(array)
