"""silu(gate) * up against the torch reference and the engine MLP's formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmdeploy.kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref

from ._util import DEVICE, DTYPES, TOL, gpu_cases

SHAPES = [(1, 32), (7, 600), (33, 2 * 1536), (2, 3, 2 * 70), *gpu_cases(((4096, 2 * 14336),))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, device=DEVICE)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **TOL[dtype])


def test_strided_input_matches_engine_formula():
    torch.manual_seed(1)
    x = torch.randn(5, 3 * 200, device=DEVICE)[:, 100:500]  # rows of a wider buffer
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(silu_and_mul(x), F.silu(gate) * up, **TOL[torch.float32])
