"""csrc/gguf_repack.c: Q4 weights repacked 16 rows at a time and the one-row GEMV over them,
against llama.cpp's reference dequantisation (the `gguf` package) and a float64 matmul."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import gguf_repack

pytestmark = pytest.mark.skipif(gguf_repack.library() is None, reason="needs a C compiler")
needs_gemv = pytest.mark.skipif(not gguf_repack.gemv_available(), reason="needs AVX-512F")


def _quantized(qtype: str, rows: int, cols: int) -> tuple[torch.Tensor, np.ndarray]:
    kind = gguf.GGMLQuantizationType[qtype]
    w = np.random.default_rng(rows + cols).standard_normal((rows, cols)).astype(np.float32)
    blocks = gguf.quants.quantize(w, kind)
    return torch.from_numpy(np.ascontiguousarray(blocks)), gguf.quants.dequantize(blocks, kind)


@needs_gemv
@pytest.mark.parametrize("qtype", list(gguf_repack.TYPE_IDS))
@pytest.mark.parametrize(("n", "k"), [(16, 32), (48, 320), (96, 1504)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_equals_dequantize_then_matmul(qtype, n, k, with_bias):
    blocks, w = _quantized(qtype, n, k)
    x = torch.randn(1, 2 * k, generator=torch.Generator().manual_seed(k))[:, ::2]  # strided
    bias = torch.randn(n, generator=torch.Generator().manual_seed(n)) if with_bias else None
    y = gguf_repack.gemv(x, gguf_repack.repack(blocks, qtype, n), qtype, n, bias)
    expected = x.double().numpy() @ w.astype(np.float64).T
    if with_bias:
        expected += bias.double().numpy()
    # Only float32 summation differs from the float64 reference: ~1e-6 of |y|'s scale (<= 40).
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("qtype", "n", "k"), [("Q4_1", 70, 320), ("Q4_0", 8, 64), ("Q8_0", 32, 64)]
)
def test_repack_rejects_what_the_layout_cannot_hold(qtype, n, k):
    blocks, _ = _quantized(qtype, n, k)
    with pytest.raises(ValueError, match="keep gguf_float's path"):
        gguf_repack.repack(blocks, qtype, n)


def test_supports_only_q4_with_whole_groups_and_blocks():
    assert gguf_repack.supports("Q4_0", 576, 1536) and gguf_repack.supports("Q4_1", 16, 32)
    assert not gguf_repack.supports("Q8_0", 576, 1536)
    assert not gguf_repack.supports("Q4_1", 0, 32) and not gguf_repack.supports("Q4_1", 16, 0)
    assert not gguf_repack.supports("Q4_1", 24, 32) and not gguf_repack.supports("Q4_1", 16, 48)


@needs_gemv
def test_gemv_rejects_more_than_one_row():
    blocks, _ = _quantized("Q4_1", 16, 64)
    with pytest.raises(ValueError, match="use gguf_float"):
        gguf_repack.gemv(torch.randn(2, 64), gguf_repack.repack(blocks, "Q4_1", 16), "Q4_1", 16)


def test_a_build_without_avx512_has_no_gemv_but_repacks_the_same_bytes():
    narrow = gguf_repack.library(("-mno-avx512f",))
    assert not gguf_repack.gemv_available(narrow)
    blocks, _ = _quantized("Q4_1", 32, 96)
    native = gguf_repack.repack(blocks, "Q4_1", 32)
    assert torch.equal(gguf_repack.repack(blocks, "Q4_1", 32, narrow), native)
    # Row 17's first block: its d opens group 1's first chunk at slot 1, its quants' byte j
    # at slot 1 of position j.
    chunk = native[(96 // 32) * (32 + 32 + 256) :][: 32 + 32 + 256]
    row = blocks[17, :20]
    assert torch.equal(chunk[2:4], row[0:2]) and torch.equal(chunk[34:36], row[2:4])
    assert torch.equal(chunk[64 + 1 :: 16], row[4:20])
