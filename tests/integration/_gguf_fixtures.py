"""Tiny Llama and Qwen2 GGUF files written the way llama.cpp's converter writes them.

`write_tiny_gguf` returns the float32 originals in HF naming and layout, so a test can check a
loader against what went in. K-quant types have no quantizer in gguf-py: their tensors are valid
raw blocks of random bytes with small float16 scales, and have no float32 original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

QK_K = 256  # values per K-quant super-block


@dataclass(frozen=True)
class TinyLlamaShape:
    vocab_size: int = 300
    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    context_length: int = 512


def llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    """The Q/K row order llama.cpp's convert_hf_to_gguf.py writes (interleaved rotary pairs)."""
    rows, cols = w.shape
    return w.reshape(num_heads, 2, rows // num_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _hf_tensors(
    shape: TinyLlamaShape, rng: np.random.Generator, qkv_bias: bool
) -> dict[str, np.ndarray]:
    """Random float32 weights keyed by their GGUF names, in HF (unpermuted) layout."""
    h, i = shape.hidden_size, shape.intermediate_size
    q_rows, kv_rows = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim

    def normal(*dims: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, dims).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.1, h)).astype(np.float32)

    tensors = {"token_embd.weight": normal(shape.vocab_size, h)}
    for n in range(shape.num_layers):
        tensors |= {
            f"blk.{n}.attn_norm.weight": norm(),
            f"blk.{n}.attn_q.weight": normal(q_rows, h),
            f"blk.{n}.attn_k.weight": normal(kv_rows, h),
            f"blk.{n}.attn_v.weight": normal(kv_rows, h),
            f"blk.{n}.attn_output.weight": normal(h, q_rows),
            f"blk.{n}.ffn_norm.weight": norm(),
            f"blk.{n}.ffn_gate.weight": normal(i, h),
            f"blk.{n}.ffn_up.weight": normal(i, h),
            f"blk.{n}.ffn_down.weight": normal(h, i),
        }
        if qkv_bias:
            tensors |= {
                f"blk.{n}.attn_q.bias": normal(q_rows) * 5,
                f"blk.{n}.attn_k.bias": normal(kv_rows) * 5,
                f"blk.{n}.attn_v.bias": normal(kv_rows) * 5,
            }
    tensors["output_norm.weight"] = norm()
    tensors["output.weight"] = normal(shape.vocab_size, h)
    return tensors


def random_k_quant_blocks(
    qtype: gguf.GGMLQuantizationType, shape: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Raw Q4_K or Q6_K bytes for a [rows, cols] tensor: random quants, scales giving |w| < 0.1."""
    rows, cols = shape
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, (rows * cols // QK_K, block_bytes), dtype=np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        # d, dmin (f16), 12 packed 6-bit scales/mins, 128 bytes of 4-bit quants
        blocks[:, 0:2] = _f16_bytes(rng.uniform(0.5e-4, 1e-4, len(blocks)))  # d * 63 * 15 < 0.1
        blocks[:, 2:4] = _f16_bytes(rng.uniform(2e-4, 7e-4, len(blocks)))  # dmin * 63 < 0.05
    elif qtype == gguf.GGMLQuantizationType.Q6_K:
        # ql 128, qh 64, 16 int8 scales, d (f16) last
        blocks[:, -2:] = _f16_bytes(rng.uniform(1e-5, 2.4e-5, len(blocks)))  # d * 128 * 32 < 0.1
    else:
        raise ValueError(f"no raw-block builder for {qtype.name}")
    return blocks.reshape(rows, -1)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _encode(
    array: np.ndarray, qtype: gguf.GGMLQuantizationType, rng: np.random.Generator
) -> np.ndarray:
    if array.ndim == 1:  # norms stay float32, as llama.cpp keeps them
        return array
    if qtype == gguf.GGMLQuantizationType.F64:  # valid GGUF, but no llama.cpp model uses it
        return array.astype(np.float64)
    if qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q6_K):
        return random_k_quant_blocks(qtype, array.shape, rng)
    return gguf.quants.quantize(array, qtype)


def _add_metadata(writer: gguf.GGUFWriter, shape: TinyLlamaShape, arch: str) -> None:
    writer.add_name(f"tiny-{arch}")
    writer.add_uint32(f"{arch}.block_count", shape.num_layers)
    writer.add_uint32(f"{arch}.context_length", shape.context_length)
    writer.add_uint32(f"{arch}.embedding_length", shape.hidden_size)
    writer.add_uint32(f"{arch}.feed_forward_length", shape.intermediate_size)
    writer.add_uint32(f"{arch}.attention.head_count", shape.num_heads)
    writer.add_uint32(f"{arch}.attention.head_count_kv", shape.num_kv_heads)
    writer.add_float32(f"{arch}.rope.freq_base", shape.rope_theta)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", shape.rms_norm_eps)
    writer.add_uint32(f"{arch}.rope.dimension_count", shape.head_dim)
    writer.add_uint32(f"{arch}.vocab_size", shape.vocab_size)


def _add_tokenizer(writer: gguf.GGUFWriter, vocab_size: int) -> None:
    """A byte-level BPE vocabulary (the 256 byte tokens in ASCII order, then 't0', 't1', ...
    with one merge, 't 0'): enough for the engine to start from the file alone and detokenize
    what it generates."""
    tokens = [chr(b) if 33 <= b < 127 else f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"t{i}" for i in range(vocab_size - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * vocab_size)
    writer.add_token_merges(["t 0"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)


def write_tiny_gguf(
    path: Path,
    qtype: gguf.GGMLQuantizationType,
    shape: TinyLlamaShape | None = None,
    with_output: bool = True,
    seed: int = 0,
    arch: str = "llama",
    types: dict[str, gguf.GGMLQuantizationType] | None = None,
    tokenizer: bool = False,
) -> dict[str, np.ndarray]:
    """Write the GGUF file; return the float32 originals keyed by GGUF name (HF row order).

    `types` gives some tensors a type other than `qtype`, by the part of their name after the
    layer (e.g. {'ffn_down': Q6_K, 'output': Q6_K}), as llama.cpp's mixed types (Q4_K_M) do.
    `tokenizer` adds a vocabulary, so that pipeline() can run the file.

    Without `output.weight` the model ties its LM head to the token embedding, as llama.cpp reads it.
    `arch` 'qwen2' adds Qwen2's q/k/v biases and keeps Q/K rows unpermuted, as llama.cpp does
    for a rotate-half (NEOX) model.
    """
    shape = shape or TinyLlamaShape()
    rng = np.random.default_rng(seed)
    originals = _hf_tensors(shape, rng, qkv_bias=arch == "qwen2")
    if not with_output:
        del originals["output.weight"]
    writer = gguf.GGUFWriter(str(path), arch)
    _add_metadata(writer, shape, arch)
    if tokenizer:
        _add_tokenizer(writer, shape.vocab_size)
    permuted = arch == "llama"
    for name, array in originals.items():
        if permuted and name.endswith(".attn_q.weight"):
            array = llama_cpp_permute(array, shape.num_heads)
        elif permuted and name.endswith(".attn_k.weight"):
            array = llama_cpp_permute(array, shape.num_kv_heads)
        kind = (types or {}).get(name.split(".")[-2], qtype)
        data = _encode(array, kind, rng)
        raw_dtype = None if data.dtype in (np.float32, np.float16, np.float64) else kind
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return originals
