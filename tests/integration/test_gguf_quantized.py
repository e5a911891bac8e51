"""GGUF weights kept quantized on the CPU (csrc/gguf_quants.c) against llama.cpp's reference
dequantisation (the `gguf` package) and against the float32 path."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_float, gguf_linear
from lmdeploy.adapters.engines.pytorch.builder import build
from lmdeploy.adapters.loaders.gguf_file import GGUFCheckpoint, QuantizedWeight
from lmdeploy.adapters.loaders.model_source import resolve
from lmdeploy.application.configs import PytorchEngineConfig
from lmdeploy.infrastructure.devices import platform_for

from ._gguf_fixtures import TinyLlamaShape, random_k_quant_blocks, write_tiny_gguf

pytestmark = pytest.mark.skipif(not gguf_linear.available(), reason="needs AVX2 and a compiler")

TYPES = list(gguf_linear.TYPE_IDS)
K_QUANTS = ["Q4_K", "Q6_K"]  # gguf-py has no quantizer for them: random valid blocks instead
# The native build (AVX-512 VNNI where the CPU has it) and the AVX2 one, on any AVX2 CPU.
VARIANTS = {"native": (), "avx2": ("-mno-avx512f",)}


def _q8_dequantized(x: np.ndarray) -> np.ndarray:
    """x rounded as the kernel quantizes activations: per 32, scale max|x| / 127."""
    blocks = x.reshape(x.shape[0], -1, 32)
    d = np.abs(blocks).max(-1, keepdims=True) / np.float32(127)
    q = np.rint(blocks / np.where(d == 0, 1, d))
    return (q.astype(np.float64) * d).reshape(x.shape)


def _q8_k_dequantized(x: np.ndarray) -> np.ndarray:
    """x rounded as llama.cpp's quantize_row_q8_K_ref (the k-quants' activations): per 256,
    d = -max / 127 for the value of largest magnitude, in float32 as its C computes it."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, 256)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
    iscale = np.float32(-127) / np.where(peak == 0, np.float32(1), peak)  # zeros stay zeros
    q = np.minimum(np.rint(iscale * blocks), 127)
    d = np.float32(1) / iscale
    return (q.astype(np.float64) * d).reshape(x.shape)


def _activations_rounded(qtype: str, x: np.ndarray) -> np.ndarray:
    return _q8_k_dequantized(x) if qtype in K_QUANTS else _q8_dequantized(x)


def _quantized(qtype: str, rows: int, cols: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Random weights as GGUF blocks, and llama.cpp's dequantisation of them (float32)."""
    kind = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(seed)
    if qtype in K_QUANTS:
        blocks = random_k_quant_blocks(kind, (rows, cols), rng)
    else:
        blocks = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32), kind)
    return torch.from_numpy(np.ascontiguousarray(blocks)), gguf.quants.dequantize(blocks, kind)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 16, 37])
def test_matmul_equals_reference_on_q8_activations(qtype, rows, variant):
    lib = gguf_linear.library(VARIANTS[variant])
    assert not lib.uses_vnni() or variant == "native"
    blocks, w = _quantized(qtype, 70, 512)
    x = torch.randn(rows, 512, generator=torch.Generator().manual_seed(rows))
    y = gguf_linear.matmul(x, blocks, qtype, 70, lib)
    expected = _activations_rounded(qtype, x.numpy()) @ w.astype(np.float64).T
    # Only float32 summation differs from the float64 reference: ~1e-6 of |y|'s scale. (The
    # activations' rounding is ~1e-2 of it: rounding them another way fails this.)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=5e-6 * scale)


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_activations_round_as_q8_k(qtype):
    """A row whose largest value is negative, one that is all zeros, and values at the
    rounding boundary: the kernel's q8_K matches llama.cpp's (d's sign follows -max)."""
    blocks, w = _quantized(qtype, 8, 256, seed=3)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(3))
    x[0, 17] = -10.0
    x[1] = 0.0
    x[2, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -126.5, 63.5])
    y = gguf_linear.matmul(x, blocks, qtype, 8)
    expected = _q8_k_dequantized(x.numpy()) @ w.astype(np.float64).T
    assert not expected[1].any()
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=5e-6 * np.abs(expected).max())


@pytest.mark.parametrize("qtype", TYPES)
def test_dequantize_rows_equals_gguf(qtype):
    blocks, w = _quantized(qtype, 50, 512, seed=1)
    index = torch.tensor([[7, 0], [49, 7]])
    rows = gguf_linear.dequantize_rows(blocks, qtype, 512, index)
    np.testing.assert_array_equal(rows.numpy(), w[index.reshape(-1).numpy()])


def test_mixed_types_run_each_on_their_outputs():
    """A fused linear whose parts differ in type (Q4_K_M's q, k Q4_K and v Q6_K): each part's
    outputs as its own kernel gives them, with its own activation rounding."""
    parts = [("Q4_K", 40), ("Q4_K", 8), ("Q6_K", 24), ("Q8_0", 16)]
    made = [(qtype, *_quantized(qtype, rows, 512, seed=i)) for i, (qtype, rows) in enumerate(parts)]
    bias = torch.randn(88)
    layer = gguf_linear.linear([(qtype, blocks) for qtype, blocks, _ in made], bias, True)
    assert layer.qtypes == ("Q4_K", "Q6_K", "Q8_0")  # the two Q4_K parts run as one
    x = torch.randn(2, 3, 1024)[..., ::2]
    expected = np.concatenate(
        [_activations_rounded(qtype, x.reshape(6, 512).numpy()) @ w.T for qtype, _, w in made],
        axis=1,
    )
    y = layer(x)
    assert y.shape == (2, 3, 88)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(
        y.reshape(6, 88).numpy(), expected + bias.numpy(), rtol=0, atol=5e-6 * scale
    )
    single = gguf_linear.linear([("Q4_K", made[0][1]), ("Q4_K", made[1][1])], None, True)
    assert isinstance(single, gguf_linear.GGUFLinear) and single.out_features == 48


@pytest.mark.parametrize("qtype", K_QUANTS)
def test_k_quant_dequantize_rows_equals_gguf_on_any_bytes(qtype):
    """Every byte random, the fp16 scales too (negative, subnormal; only inf/NaN left out)."""
    kind = gguf.GGMLQuantizationType[qtype]
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 256, (32, gguf.GGML_QUANT_SIZES[kind][1]), dtype=np.uint8)
    halves = slice(0, 4) if qtype == "Q4_K" else slice(208, 210)  # Q4_K: d, dmin; Q6_K: d
    scales = blocks[:, halves].copy().view(np.float16)
    finite = np.where(np.isfinite(scales), scales, np.float16(-3.5e-6))
    blocks[:, halves] = finite.view(np.uint8)
    blocks = blocks.reshape(16, -1)  # rows of 512 weights: 2 super-blocks each
    rows = gguf_linear.dequantize_rows(torch.from_numpy(blocks), qtype, 512, torch.arange(16))
    np.testing.assert_array_equal(rows.numpy(), gguf.quants.dequantize(blocks, kind))


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
    model = build(resolve(str(path)), config, platform_for(config)).runner.model
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
    up to float32 summation order. The k-quants, which only the int8 kernels read, are
    dequantized at load: the same results."""
    qtype, path = tiny_gguf
    logits, model = _last_logits(path, "auto", int_kernels=False)
    dense_logits, dense = _last_logits(path, "float32", int_kernels=False)
    torch.testing.assert_close(logits, dense_logits, rtol=0, atol=1e-4)
    on_float_kernel = gguf_float.supports(qtype, 512)
    kept = model.model.embed_tokens.gguf
    assert (kept.qtype == qtype if on_float_kernel else kept is None) and not _gguf_linears(dense)
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
    assert checked == (2 * 4 + 1 if on_float_kernel else 0)  # qkv, o, gate_up, down; LM head


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


# --- k-quants end to end: a Q4_K_M-like mix of types ----------------------------------------

# The rest Q4_K: q/k/v run as one linear over two types.
_Q6_K_PARTS = ("attn_v", "attn_output", "ffn_down", "token_embd", "output")
# The int path's logprobs differ from the float path's by its activation rounding (~1e-2
# relative per linear): at most 0.021 nats over 96 steps of 12 prompts here, so about twice that.
_LOGPROB_TOL = 0.05
# The random model's logits are flat: near-ties are common, and the paths part at some of them
# (at ties of 0.014 and 0.001 nats within 8 tokens of these prompts).
_PROMPTS = np.random.default_rng(1).integers(3, 300, (12, 5)).tolist()


@pytest.fixture(scope="module")
def k_quant_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("kquants") / "tiny-q4_k_m.gguf"
    types = dict.fromkeys(_Q6_K_PARTS, gguf.GGMLQuantizationType.Q6_K)
    write_tiny_gguf(
        path, gguf.GGMLQuantizationType.Q4_K, TinyLlamaShape(), types=types, tokenizer=True
    )
    return path


def test_k_quant_model_keeps_every_matrix_quantized(k_quant_gguf):
    _, model = _last_logits(k_quant_gguf, "auto")
    layer = model.model.layers[0]
    assert layer.self_attn.qkv_proj.packed.qtypes == ("Q4_K", "Q6_K")
    assert layer.self_attn.o_proj.packed.qtype == "Q6_K"
    assert layer.mlp.gate_up_proj.packed.qtype == "Q4_K"
    assert layer.mlp.down_proj.packed.qtype == "Q6_K"
    assert model.lm_head.packed.qtype == "Q6_K"
    assert model.model.embed_tokens.gguf.qtype == "Q6_K"


def test_tied_k_quant_head_runs_on_the_embedding_blocks(tmp_path):
    path = tmp_path / "tied-q6_k.gguf"
    write_tiny_gguf(path, gguf.GGMLQuantizationType.Q6_K, TinyLlamaShape(), with_output=False)
    logits, model = _last_logits(path, "auto")
    assert model.lm_head.packed.blocks is model.model.embed_tokens.gguf.blocks  # one copy
    dense, _ = _last_logits(path, "float32")
    # Only the head's q8_K activation rounding differs (the embedding rows are exact): 1.5e-3
    # of the largest logit here.
    scale = dense.abs().max().item()
    torch.testing.assert_close(logits, dense, rtol=0, atol=5e-3 * scale)


def _greedy(path, dtype: str) -> list:
    from lmdeploy import GenerationConfig, pipeline

    config = PytorchEngineConfig(
        dtype=dtype, gguf_int_kernels=dtype == "auto", session_len=64, cache_max_entry_count=0.05
    )
    gen = GenerationConfig(max_new_tokens=8, do_sample=False, ignore_eos=True, logprobs=2)
    with pipeline(str(path), backend_config=config) as pipe:
        return pipe(_PROMPTS, gen_config=gen)


def test_k_quant_model_decodes_the_float_paths_greedy_ids(k_quant_gguf):
    """Step by step the same tokens, with logprobs within the int path's rounding, until a
    near-tie of the float path (its two best within that rounding), which either path may break
    its own way; the random model has such ties, so the sequences may part only there."""
    agreed = 0
    for q, f in zip(_greedy(k_quant_gguf, "auto"), _greedy(k_quant_gguf, "float32"), strict=True):
        for qi, fi, q_top, f_top in zip(
            q.token_ids, f.token_ids, q.logprobs, f.logprobs, strict=True
        ):
            best, second = sorted(f_top.values(), reverse=True)[:2]
            if best - second < _LOGPROB_TOL:
                break
            assert qi == fi
            assert abs(q_top[qi] - f_top[fi]) < _LOGPROB_TOL
            agreed += 1
    assert agreed >= 16  # (24 here) the comparison is not vacuous
