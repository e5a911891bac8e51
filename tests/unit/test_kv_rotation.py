"""The rotation around an int4 KV cache is orthonormal, so attention's result does not change."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.layers.kv_rotation import head_rotation, rotation_for


@pytest.mark.parametrize("head_dim", [64, 128, 80])  # Hadamard, and a random orthogonal one
def test_rotation_is_orthonormal_and_keeps_attention(head_dim):
    spin = head_rotation(head_dim, torch.float64, torch.device("cpu"))
    torch.testing.assert_close(spin @ spin.T, torch.eye(head_dim, dtype=torch.float64))
    q, k, v = (torch.randn(5, head_dim, dtype=torch.float64) for _ in range(3))
    probs = ((q @ spin) @ (k @ spin).T).softmax(-1)
    torch.testing.assert_close(probs @ (v @ spin) @ spin.T, (q @ k.T).softmax(-1) @ v)


def test_only_an_int4_cache_is_rotated():
    int4 = torch.zeros(2, 16, 3, 32, dtype=torch.uint8)  # head_dim 64, two values a byte
    int8 = torch.zeros(2, 16, 3, 64, dtype=torch.uint8)
    assert rotation_for(int4, 64, torch.float32) is not None
    assert rotation_for(int8, 64, torch.float32) is None
