"""At engine start on CUDA, the prefill kernel runs once per tile shape and per kind of
attention layer, so that no serving step waits for Triton to compile one (~1 s)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmdeploy.adapters.engines.pytorch.backends.cuda import attention as cuda_attention
from lmdeploy.adapters.engines.pytorch.layers.attention import Attention
from lmdeploy.kernels.paged_prefill_attention import _prefill_config

from ._util import DEVICE


class TwoKinds(nn.Module):
    """Gemma 2's pattern: a windowed layer, a global one with the same heads, and a repeat."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [Attention(4, 2, 16, sliding_window=32), Attention(4, 2, 16), Attention(4, 2, 16)]
        )


@pytest.mark.parametrize("blocks", [8, 80])  # a cache of 128 tokens, then of 1280
def test_each_tile_shape_runs_once_per_kind_of_layer(monkeypatch, blocks):
    block_size = 16
    k_cache = torch.randn(blocks, block_size, 2, 16, device=DEVICE)
    v_cache = torch.randn(blocks, block_size, 2, 16, device=DEVICE)
    before = (k_cache.clone(), v_cache.clone())
    calls = []
    real = cuda_attention.paged_prefill_attention

    def recording(q, k, v, tables, cu, lens, max_query_len, scale, **kw):
        calls.append((max_query_len, kw["sliding_window"], tuple(q.shape)))
        assert cu.tolist() == [0, max_query_len] and lens.tolist() == [max_query_len]
        assert tables.shape == (1, -(-max_query_len // block_size))
        return real(q, k, v, tables, cu, lens, max_query_len, scale, **kw)

    monkeypatch.setattr(cuda_attention, "paged_prefill_attention", recording)
    kinds = [(m.heads, m.options) for m in TwoKinds().modules() if isinstance(m, Attention)]
    launches = cuda_attention.compile_prefill_kernels(
        kinds, [(k_cache, v_cache)], block_size, torch.float32
    )
    lengths = [16, 64] + ([1024] if blocks * block_size >= 1024 else [])
    assert launches == len(calls) == 2 * len(lengths)
    assert sorted(calls, key=repr) == sorted(
        [(n, w, (n, 4, 16)) for n in lengths for w in (32, None)], key=repr
    )
    # The lengths cover every tile shape the kernel picks (head dim 128, half precision).
    every = {
        _prefill_config(128, n, torch.bfloat16) for n in (2, 31, 32, 33, 500, 1023, 1024, 4096)
    }
    warmed = {_prefill_config(128, n, torch.bfloat16) for n in cuda_attention.PREFILL_SHAPE_LENS}
    assert every == warmed and len(every) == 3
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])  # read only
