"""The tensor-core W4A16 GEMM of the mma layout against the dequantised fp32 product, and its
layout against the plain codes."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.w4a16_mma import (
    mma_zeros,
    pack_int4_mma,
    unpack_int4_mma,
    w4a16_mma_dequantize,
    w4a16_mma_gemm,
)

from ._util import DEVICE, ON_CUDA, cuda_only, gpu_cases

# The interpreter has float16 (numpy) but no bfloat16: bf16 runs on the GPU only.
HALF_TYPES = [torch.float16, pytest.param(torch.bfloat16, marks=cuda_only)]


def _random_int4(k: int, n: int, group: int, dtype: torch.dtype):
    codes = torch.randint(0, 16, (k, n), device=DEVICE)
    scales = (torch.rand(k // group, n, device=DEVICE) * 0.02 + 0.001).to(dtype)
    zeros = torch.randint(0, 16, (k // group, n), device=DEVICE)
    return codes, scales, zeros


def _dense(codes, scales, zeros, group):
    s = scales.float().repeat_interleave(group, 0)
    return (codes.float() - zeros.float().repeat_interleave(group, 0)) * s


@pytest.mark.parametrize("k, group", [(512, 128), (384, 128), (96, 32), (320, 64)])
def test_pack_and_unpack_are_inverse_and_a_word_holds_four_groups(k, group):
    codes = torch.randint(0, 16, (k, 24), device=DEVICE)
    packed = pack_int4_mma(codes, group)
    tile = 4 * group
    assert packed.shape == (24, -(-k // tile) * tile // 8) and packed.dtype == torch.int32
    assert torch.equal(unpack_int4_mma(packed, group, k), codes.to(torch.int32))
    # Row n's first word: k = 0 and 1 of groups 0..3 in nibbles 0..3 of its two halves.
    word, n = int(packed[5, 0]), 5
    for s in range(4):
        for h in range(2):
            k_s = s * group + h
            expected = int(codes[k_s, n]) if k_s < k else 0
            assert (word >> (16 * h + 4 * s)) & 0xF == expected


# (M, K, N, group): a partial last tile (K = 3 G), N not a multiple of the tile, split K.
SHAPES = [
    (1, 512, 72, 128),
    (1, 384, 64, 128),
    (3, 256, 40, 32),
    (16, 192, 136, 64),
    (17, 512, 64, 32),
    (64, 1024, 64, 128),
    *gpu_cases((1, 4096, 6144, 128), (1, 14336, 4096, 128), (64, 4096, 28672, 128)),
]


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("m, k, n, group", SHAPES)
def test_matches_the_dequantised_product(m, k, n, group, dtype):
    torch.manual_seed(0)
    codes, scales, zeros = _random_int4(k, n, group, dtype)
    x = torch.randn(m, k, device=DEVICE, dtype=dtype)
    bias = torch.randn(n, device=DEVICE, dtype=dtype)
    got = w4a16_mma_gemm(
        x, pack_int4_mma(codes, group), scales, mma_zeros(zeros, dtype), group, bias=bias
    )
    expected = x.float() @ _dense(codes, scales, zeros, group) + bias.float()
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.float() / scale, expected / scale, atol=4e-3, rtol=0)


@pytest.mark.parametrize("config", [dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=3, num_warps=4)])
def test_a_split_larger_than_the_tiles_leaves_empty_programs_harmless(config):
    """Splits past the last tile have no groups: they add a zero partial, nothing else."""
    torch.manual_seed(1)
    dtype = torch.float16
    codes, scales, zeros = _random_int4(256, 64, 64, dtype)  # one tile of 4 groups
    x = torch.randn(2, 256, device=DEVICE, dtype=dtype)
    packed, zz = pack_int4_mma(codes, 64), mma_zeros(zeros, dtype)
    got = w4a16_mma_gemm(x, packed, scales, zz, 64, config=config)
    expected = x.float() @ _dense(codes, scales, zeros, 64)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.float() / scale, expected / scale, atol=4e-3, rtol=0)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_beyond_64_rows_the_dequantised_weight_multiplies(dtype):
    torch.manual_seed(2)
    codes, scales, zeros = _random_int4(384, 40, 32, dtype)
    packed, zz = pack_int4_mma(codes, 32), mma_zeros(zeros, dtype)
    dense = w4a16_mma_dequantize(packed, scales, zz, 32, 384)
    expected = _dense(codes, scales, zeros, 32)
    torch.testing.assert_close(dense.float(), expected.to(dtype).float(), atol=0, rtol=0)
    x = torch.randn(65 if ON_CUDA else 66, 384, device=DEVICE, dtype=dtype)
    got = w4a16_mma_gemm(x, packed, scales, zz, 32)
    scale = (x.float() @ expected).abs().max().item()
    torch.testing.assert_close(
        got.float() / scale, (x.float() @ expected) / scale, atol=4e-3, rtol=0
    )
