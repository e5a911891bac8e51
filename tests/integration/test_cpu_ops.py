"""The C elementwise kernels of the CPU layer loop (csrc/cpu_ops.c) against the torch ops they
replace: rotary and the residual add bit for bit, RMSNorm to the last bit."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.backends.cpu import ops as cpu_ops
from lmdeploy.adapters.engines.pytorch.backends.torch_native.ops import apply_rotary

pytestmark = pytest.mark.skipif(
    not cpu_ops.available(torch.zeros(1)), reason="no C compiler: the CPU path uses torch ops"
)


def _hf_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


@pytest.mark.parametrize("rows", [1, 16, 300])  # 300 x 576 takes the parallel branch
def test_add_rms_norm_equals_residual_add_then_hf_rms_norm(rows):
    g = torch.Generator().manual_seed(rows)
    h, residual = torch.randn(rows, 576, generator=g), torch.randn(rows, 576, generator=g) * 3
    weight = torch.rand(576, generator=g) + 0.5
    expected_sum = residual + h
    normed, new_residual = cpu_ops.fused_add_rms_norm(h, residual.clone(), weight, 1e-5)
    assert torch.equal(new_residual, expected_sum)  # one rounding, as torch's add
    torch.testing.assert_close(normed, _hf_rms_norm(expected_sum, weight, 1e-5), rtol=1e-6, atol=0)
    alone = cpu_ops.rms_norm(h, weight, 1e-5)
    torch.testing.assert_close(alone, _hf_rms_norm(h, weight, 1e-5), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "tokens,heads,kv_heads,dim",
    [(1, 9, 3, 64), (16, 9, 3, 64), (700, 8, 2, 128), (5, 4, 4, 80)],
)
def test_rotary_write_kv_is_torch_rotary_then_the_cache_write(tokens, heads, kv_heads, dim):
    g = torch.Generator().manual_seed(tokens)
    width = (heads + 2 * kv_heads) * dim
    # Rows of a wider buffer: the kernel takes qkv with any row stride.
    buffer = torch.randn(tokens, width + 32, generator=g)
    qkv = buffer[:, :width]
    cos, sin = torch.randn(tokens, dim, generator=g), torch.randn(tokens, dim, generator=g)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    expected_qk = apply_rotary(
        qkv[:, : (heads + kv_heads) * dim].reshape(tokens, heads + kv_heads, dim), cos, sin
    )
    expected_v = v.clone()
    num_slots = 2 * tokens + 4
    k_cache = torch.full((num_slots // 4 + 1, 4, kv_heads, dim), 7.0)
    v_cache = torch.full_like(k_cache, 7.0)
    slots = torch.randperm(num_slots, generator=g)[:tokens]
    slots[0] = -1  # a padding row: written nowhere
    assert cpu_ops.rotary_write_kv(qkv, cos, sin, k_cache, v_cache, slots, heads, kv_heads, dim)
    rotated = qkv[:, : (heads + kv_heads) * dim].reshape(tokens, heads + kv_heads, dim)
    assert torch.equal(rotated, expected_qk)
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], expected_v)  # v is not rotated
    flat_k, flat_v = k_cache.view(-1, kv_heads, dim), v_cache.view(-1, kv_heads, dim)
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            assert torch.equal(flat_k[slot], expected_qk[t, heads:])
            assert torch.equal(flat_v[slot], expected_v[t].view(kv_heads, dim))
    untouched = torch.ones(flat_k.shape[0], dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert (flat_k[untouched] == 7.0).all() and (flat_v[untouched] == 7.0).all()


def test_declines_layouts_it_does_not_take():
    qkv = torch.randn(4, 15 * 64)
    cos = torch.randn(64, 4).t()  # columns: not unit-stride rows
    caches = torch.zeros(8, 4, 3, 64), torch.zeros(8, 4, 3, 64)
    slots = torch.arange(4)
    assert not cpu_ops.rotary_write_kv(qkv, cos, cos, *caches, slots, 9, 3, 64)


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_silu_and_mul_within_a_few_ulp_of_the_exact_value(rows):
    g = torch.Generator().manual_seed(rows)
    gate_up = torch.randn(rows, 2 * 1544, generator=g) * 8  # 1544: a tail past the 8 lanes
    gate, up = gate_up.chunk(2, dim=-1)
    exact = gate.double() * torch.sigmoid(gate.double()) * up.double()
    out = cpu_ops.silu_and_mul(gate_up)
    assert out.shape == (rows, 1544) and out.is_contiguous()
    ulps = (out.double() - exact).abs() / (exact.abs() * 2**-23)
    assert ulps.max() < 4  # torch's own: within 2
    # Far past the exponent's range the result is tiny or x itself, and finite.
    edges = torch.tensor([[-200.0, -90.0, 0.0, 90.0, 200.0] + [1.0] * 5])
    torch.testing.assert_close(
        cpu_ops.silu_and_mul(edges), torch.nn.functional.silu(edges[:, :5]), rtol=1e-6, atol=1e-30
    )
