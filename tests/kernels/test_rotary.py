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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_norm", [False, True])
def test_rotated_keys_and_values_written_to_their_slots(dtype, with_norm):
    """kv_write: the cache rows equal kv_cache_write's of the reference's rotated k and of v,
    from views of one qkv output; a padding token (slot -1) writes nothing."""
    from lmdeploy.kernels.kv_cache_write import kv_cache_write_ref

    torch.manual_seed(3)
    heads, kv_heads, dim, tokens, blocks, block_size = 8, 2, 32, 6, 4, 4
    cos, sin = _tables(dim)
    positions = torch.randint(0, cos.shape[0], (tokens,), device=DEVICE)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, dtype=dtype, device=DEVICE)
    q, k, v = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    q, k, v = (x.view(tokens, -1, dim) for x in (q, k, v))
    slots = torch.tensor([5, 0, -1, 15, 9, 2], device=DEVICE)
    norms = None
    if with_norm:
        norms = (torch.rand(dim, dtype=dtype, device=DEVICE) + 0.5,) * 2 + (1e-6,)
    ref_q, ref_k = rotary_ref(q, k, cos, sin, positions, qk_norm=norms)
    want_k, want_v = (torch.zeros(blocks, block_size, kv_heads, dim, dtype=dtype) for _ in "kv")
    want_k, want_v = want_k.to(DEVICE), want_v.to(DEVICE)
    kv_cache_write_ref(ref_k, v, want_k, want_v, slots)
    k_cache, v_cache = torch.zeros_like(want_k), torch.zeros_like(want_v)
    out_q, _ = rotary(
        q, k, cos, sin, positions, inplace=True, qk_norm=norms,
        kv_write=(v, k_cache, v_cache, slots),
    )  # fmt: skip
    torch.testing.assert_close(out_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(k_cache, want_k, **TOL[dtype])
    torch.testing.assert_close(v_cache, want_v, atol=0, rtol=0)
    assert k_cache.flatten(0, 1)[[1, 3, 4, 6, 7, 8]].abs().sum() == 0  # untouched slots


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


@pytest.mark.parametrize("quantized_cache", [False, True])
def test_the_layers_triton_path_matches_their_torch_path(quantized_cache):
    """rotate_qk's Triton path (Qwen3 norms, rotation, the K/V write for an unquantized cache)
    against the torch path it replaces: RMSNorm modules, apply_rotary, write_kv."""
    from lmdeploy.adapters.engines.pytorch.backends.torch_native.ops import apply_rotary
    from lmdeploy.adapters.engines.pytorch.layers.norm import RMSNorm
    from lmdeploy.adapters.engines.pytorch.layers.rotary import rotate_qk_triton

    torch.manual_seed(4)
    heads, kv_heads, dim, tokens = 4, 2, 32, 5
    cos, sin = _tables(dim)
    positions = torch.arange(7, 7 + tokens, device=DEVICE)
    cos, sin = cos[positions], sin[positions]
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device=DEVICE)
    norms = (RMSNorm(dim, 1e-6), RMSNorm(dim, 1e-6))
    for norm in norms:
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    norms = tuple(n.to(DEVICE) for n in norms)
    dtype = torch.uint8 if quantized_cache else qkv.dtype
    k_cache, v_cache = (torch.zeros(2, 4, kv_heads, dim, dtype=dtype, device=DEVICE) for _ in "kv")
    slots = torch.tensor([3, 4, -1, 0, 6], device=DEVICE)

    q0, k0, v0 = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
    want_q = apply_rotary(norms[0](q0.reshape(-1, dim)).view(tokens, heads, dim), cos, sin)
    want_k = apply_rotary(norms[1](k0.reshape(-1, dim)).view(tokens, kv_heads, dim), cos, sin)
    want_v = v0.reshape(tokens, kv_heads, dim).clone()

    q, k, v, written = rotate_qk_triton(
        qkv, cos, sin, (heads, kv_heads, dim), (k_cache, v_cache), slots, norms
    )
    torch.testing.assert_close(q, want_q, **TOL[torch.float32])
    torch.testing.assert_close(k, want_k, **TOL[torch.float32])
    torch.testing.assert_close(v, want_v)
    assert written == (not quantized_cache)
    if not quantized_cache:
        keep = slots >= 0
        torch.testing.assert_close(
            k_cache.flatten(0, 1)[slots[keep]], want_k[keep], **TOL[torch.float32]
        )
        torch.testing.assert_close(v_cache.flatten(0, 1)[slots[keep]], want_v[keep])
    else:
        assert k_cache.abs().sum() == 0 and v_cache.abs().sum() == 0  # left to kv_cache_write
