"""GGUF weights kept quantized on the CPU (csrc/gguf_quants.c) against llama.cpp's reference
dequantisation (the `gguf` package) and against the float32 path."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_linear
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.loaders.gguf_file import GGUFCheckpoint, QuantizedWeight
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.application.configs import PytorchEngineConfig

from ._gguf_fixtures import TinyLlamaShape, write_tiny_gguf

pytestmark = pytest.mark.skipif(not gguf_linear.available(), reason="needs AVX2 and a compiler")

TYPES = list(gguf_linear.TYPE_IDS)
# The native build (AVX-512 VNNI where the CPU has it) and the AVX2 one, on any AVX2 CPU.
VARIANTS = {"native": (), "avx2": ("-mno-avx512f",)}


def _q8_dequantized(x: np.ndarray) -> np.ndarray:
    """x rounded as the kernel quantizes activations: per 32, scale max|x| / 127."""
    blocks = x.reshape(x.shape[0], -1, 32)
    d = np.abs(blocks).max(-1, keepdims=True) / np.float32(127)
    q = np.rint(blocks / np.where(d == 0, 1, d))
    return (q.astype(np.float64) * d).reshape(x.shape)


def _quantized(qtype: str, rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Random weights as GGUF blocks, and llama.cpp's dequantisation of them (float64)."""
    kind = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    blocks = gguf.quants.quantize(w, kind)
    return torch.from_numpy(np.ascontiguousarray(blocks)), gguf.quants.dequantize(blocks, kind)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 16, 37])
def test_matmul_equals_reference_on_q8_activations(qtype, rows, variant):
    lib = gguf_linear.library(VARIANTS[variant])
    assert lib.gguf_uses_vnni() == 0 or variant == "native"
    blocks, w = _quantized(qtype, 70, 320)
    x = torch.randn(rows, 320, generator=torch.Generator().manual_seed(rows))
    y = gguf_linear.matmul(x, blocks, qtype, 70, lib)
    expected = _q8_dequantized(x.numpy()) @ w.astype(np.float64).T
    # Only float32 summation differs from the float64 reference: ~1e-6 of |y|'s scale (~20).
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_rows_equals_gguf(qtype):
    blocks, w = _quantized(qtype, 50, 96, seed=1)
    index = torch.tensor([[7, 0], [49, 7]])
    rows = gguf_linear.dequantize_rows(blocks, qtype, 96, index)
    np.testing.assert_array_equal(rows.numpy(), w[index.reshape(-1).numpy()])


@pytest.mark.parametrize("int8_activations", [False, True])
def test_linear_strided_input_and_bias(int8_activations):
    blocks, w = _quantized("Q4_1", 40, 64, seed=2)
    bias = torch.randn(40)
    layer = gguf_linear.GGUFLinear(blocks, "Q4_1", bias, int8_activations)
    x = torch.randn(2, 3, 128)[..., ::2]  # a leading batch shape, stride 2 along K
    y = layer(x)
    rows = x.reshape(6, 64).numpy()
    rows = _q8_dequantized(rows) if int8_activations else rows.astype(np.float64)
    expected = rows @ w.astype(np.float64).T + bias.numpy()
    assert y.shape == (2, 3, 40)
    np.testing.assert_allclose(y.reshape(6, 40).numpy(), expected, rtol=0, atol=1e-4)


@pytest.fixture(scope="module", params=TYPES)
def tiny_gguf(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "tiny.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType[request.param], TinyLlamaShape())
    return request.param, path


def test_loader_keeps_requested_types_as_their_blocks(tiny_gguf):
    qtype, path = tiny_gguf
    checkpoint = GGUFCheckpoint(path)
    floats = dict(checkpoint.weights())
    kept = dict(checkpoint.weights(keep_quantized=frozenset({qtype})))
    q_proj = "model.layers.0.self_attn.q_proj.weight"  # rows permuted by llama.cpp, undone
    assert isinstance(kept[q_proj], QuantizedWeight) and kept[q_proj].qtype == qtype
    for name, tensor in floats.items():
        value = kept[name]
        if isinstance(value, QuantizedWeight):
            assert tensor.dim() == 2
            value = value.dequantize()
        torch.testing.assert_close(value, tensor, rtol=0, atol=0, msg=name)


def _last_logits(
    path, dtype: str, int_kernels: bool = True
) -> tuple[torch.Tensor, torch.nn.Module]:
    config = PytorchEngineConfig(
        device_type="cpu",
        dtype=dtype,
        num_gpu_blocks=4,
        block_size=16,
        gguf_int_kernels=int_kernels and dtype == "auto",
    )
    model = build(resolve(str(path)), config).runner.model
    token_ids = torch.tensor([1, 17, 42, 99, 5, 250, 3])
    with torch.no_grad():
        hidden = model.model.embed_tokens(token_ids)
        logits = model.lm_head(hidden)
    return logits, model


def _gguf_linears(model: torch.nn.Module) -> list[gguf_linear.GGUFLinear]:
    return [
        m.packed
        for m in model.modules()
        if isinstance(getattr(m, "packed", None), gguf_linear.GGUFLinear)
    ]


def test_by_default_blocks_stay_and_compute_the_float32_paths(tiny_gguf):
    """Without the option, dtype 'auto' keeps the blocks on the float-activation kernel: every
    linear, the LM head and the embedding give dtype='float32''s results (dequantized weights)
    up to float32 summation order."""
    qtype, path = tiny_gguf
    _, model = _last_logits(path, "auto", int_kernels=False)
    _, dense = _last_logits(path, "float32", int_kernels=False)
    assert model.model.embed_tokens.gguf.qtype == qtype and not _gguf_linears(dense)
    ids = torch.tensor([1, 17, 299, 5])
    torch.testing.assert_close(model.model.embed_tokens(ids), dense.model.embed_tokens(ids))
    dense_modules = dict(dense.named_modules())
    checked = 0
    for name, module in model.named_modules():
        linear = getattr(module, "packed", None)
        if not isinstance(linear, gguf_linear.GGUFLinear):
            continue
        assert not linear.int8_activations, name
        x = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(checked))
        with torch.no_grad():
            torch.testing.assert_close(module(x), dense_modules[name](x), rtol=0, atol=1e-5)
        checked += 1
    assert checked == 2 * 4 + 1  # qkv, o, gate_up, down a layer, and the LM head


def test_builder_keeps_linears_and_tied_head_quantized_with_dtype_auto(tiny_gguf):
    qtype, path = tiny_gguf
    _, model = _last_logits(path, "auto")
    linears = [m for m in model.modules() if hasattr(m, "quantized") and hasattr(m, "packed")]
    assert linears and all(isinstance(m.packed, gguf_linear.GGUFLinear) for m in linears)
    assert all(m.packed.int8_activations for m in linears)
    assert model.model.embed_tokens.gguf.qtype == qtype
    assert model.model.embed_tokens.weight.numel() == 0  # no float32 copy of the table
    # dtype='float32' keeps the dequantized path
    _, dense = _last_logits(path, "float32")
    assert not any(
        isinstance(getattr(m, "packed", None), gguf_linear.GGUFLinear) for m in dense.modules()
    )


def _q8_rounded(x: torch.Tensor) -> torch.Tensor:
    """x with each 32 values rounded to 8 bits, as the kernels (and llama.cpp) take activations."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    q = torch.round(blocks / torch.where(d == 0, 1, d))
    return (q * d).reshape(x.shape)


@pytest.mark.xfail(
    strict=True,
    reason="undiagnosed: on the haiku prompt the quantized path's first token (788) differs "
    "from this reference's and the float32 path's (504); the other prompts match",
)
def test_default_model_greedy_ids_match_llama_cpp_math(monkeypatch):
    """The shipped Q4_1 model decodes the greedy tokens of llama.cpp's math: its weights
    dequantized by the float32 path, each linear's input rounded to q8 blocks. (Against the
    float32 path unrounded, a near-tie flips within a few tokens on one of these prompts.)"""
    from lmdeploy import GenerationConfig, pipeline
    from lmdeploy.adapters.engines.pytorch.layers import embedding, linear

    prompts = ["The capital of France is", "Write a haiku about the sea.", "1, 2, 3, 4,"]
    gen = GenerationConfig(max_new_tokens=24, do_sample=False, top_k=1)

    def greedy_ids(dtype: str) -> list[list[int]]:
        config = PytorchEngineConfig(dtype=dtype, gguf_int_kernels=dtype == "auto")
        with pipeline(None, backend_config=config) as pipe:
            return [out.token_ids for out in pipe(prompts, gen_config=gen)]

    quantized = greedy_ids("auto")
    for cls in (linear.LinearBase, embedding.TiedLMHead):
        forward = cls.forward
        monkeypatch.setattr(cls, "forward", lambda self, x, f=forward: f(self, _q8_rounded(x)))
    assert quantized == greedy_ids("float32")
