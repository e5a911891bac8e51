"""Rotary embedding on q and k against the torch reference and the engine's apply_rotary."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.rotary import rotary, rotary_ref

from ._util import DEVICE, DTYPES, TOL, gpu_cases

# num_tokens, heads, kv_heads, head_dim
CASES = [
    (1, 4, 4, 16),
    (7, 8, 2, 64),
    (33, 12, 3, 128),
    (5, 9, 1, 32),
    *gpu_cases((4096, 32, 8, 128), (1000, 28, 4, 64)),
]


def _tables(head_dim: int, max_positions: int = 4096):
    from lmdeploy.adapters.engines.pytorch.layers.rotary import rotary_cos_sin

    return rotary_cos_sin(head_dim, max_positions, 10000.0, None, DEVICE)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "heads", "kv_heads", "head_dim"), CASES)
def test_matches_reference(num_tokens, heads, kv_heads, head_dim, dtype, inplace):
    torch.manual_seed(0)
    cos, sin = _tables(head_dim)
    positions = torch.randint(0, cos.shape[0], (num_tokens,), device=DEVICE)
    q = torch.randn(num_tokens, heads, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    ref_q, ref_k = rotary_ref(q, k, cos, sin, positions)
    out_q, out_k = rotary(q, k, cos, sin, positions, inplace=inplace)
    torch.testing.assert_close(out_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(out_k, ref_k, **TOL[dtype])
    if inplace:
        assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("num_tokens", "heads", "kv_heads", "head_dim"), CASES[:4])
def test_heads_rms_normalized_before_rotating_match_reference(
    num_tokens, heads, kv_heads, head_dim, dtype
):
    """Qwen3's q/k norm in the same pass: each head over its dim, then scaled, then rotated."""
    torch.manual_seed(2)
    cos, sin = _tables(head_dim)
    positions = torch.randint(0, cos.shape[0], (num_tokens,), device=DEVICE)
    q = 3 * torch.randn(num_tokens, heads, head_dim, dtype=dtype, device=DEVICE)
    k = torch.randn(num_tokens, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    norms = (
        torch.rand(head_dim, dtype=dtype, device=DEVICE) + 0.5,
        torch.rand(head_dim, dtype=dtype, device=DEVICE) + 0.5,
        1e-6,
    )
    ref_q, ref_k = rotary_ref(q, k, cos, sin, positions, qk_norm=norms)
    # The norm changes the result: a kernel that skipped it would not pass the checks below.
    plain_q, _ = rotary_ref(q, k, cos, sin, positions)
    assert not torch.allclose(plain_q.float(), ref_q.float(), atol=0.1)
    out_q, out_k = rotary(q, k, cos, sin, positions, inplace=True, qk_norm=norms)
    torch.testing.assert_close(out_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(out_k, ref_k, **TOL[dtype])


def test_fused_qkv_views_in_place_match_engine():
    """q and k as views of one qkv output, rotated in place; cos/sin gathered per token
    (positions=None), as the engine passes them to apply_rotary."""
    from lmdeploy.adapters.engines.pytorch.backends.torch_native.ops import apply_rotary

    torch.manual_seed(1)
    heads, kv_heads, dim, tokens = 8, 2, 64, 11
    cos, sin = _tables(dim)
    positions = torch.arange(3, 3 + tokens, device=DEVICE)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device=DEVICE)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    want_q = apply_rotary(q, cos[positions], sin[positions])
    want_k = apply_rotary(k, cos[positions], sin[positions])
    v_before = qkv[:, (heads + kv_heads) * dim :].clone()
    rotary(q, k, cos[positions], sin[positions], inplace=True)
    torch.testing.assert_close(q, want_q, **TOL[torch.float32])
    torch.testing.assert_close(k, want_k, **TOL[torch.float32])
    assert torch.equal(qkv[:, (heads + kv_heads) * dim :], v_before), "v must be untouched"
