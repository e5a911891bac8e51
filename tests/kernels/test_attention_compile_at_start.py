"""At engine start on CUDA, the prefill kernel runs once per tile shape and the decode kernel
once per split count, per kind of attention layer, so that no serving step waits for Triton
to compile one (~1 s)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmdeploy.adapters.engines.pytorch.backends.cuda import attention as cuda_attention
from lmdeploy.adapters.engines.pytorch.layers.attention import Attention
from lmdeploy.kernels import paged_decode_attention as decode_kernel
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


@pytest.mark.parametrize("max_context", [200, 1100])
def test_each_split_count_runs_once_per_kind_of_layer(monkeypatch, max_context):
    block_size = 16
    k_cache = torch.randn(80, block_size, 2, 16, device=DEVICE)
    v_cache = torch.randn(80, block_size, 2, 16, device=DEVICE)
    before = (k_cache.clone(), v_cache.clone())
    calls = []
    real = cuda_attention.paged_decode_attention

    def recording(q, k, v, tables, lens, scale, **kw):
        calls.append((kw["num_splits"], kw["sliding_window"], tuple(q.shape)))
        assert tables.dtype == lens.dtype == torch.int64  # as the runner's steps pass them
        return real(q, k, v, tables, lens, scale, **kw)

    monkeypatch.setattr(cuda_attention, "paged_decode_attention", recording)
    kinds = [(m.heads, m.options) for m in TwoKinds().modules() if isinstance(m, Attention)]
    launches = cuda_attention.compile_decode_kernels(
        kinds, [(k_cache, v_cache)], block_size, torch.float32, max_context
    )
    counts = [1] if max_context <= 256 else [1, 2, 4]
    windowed = [1]  # the 32-token window caps that layer's splits
    assert launches == len(calls) == len(counts) + len(windowed)
    assert sorted(calls, key=repr) == sorted(
        [(n, None, (1, 4, 16)) for n in counts] + [(n, 32, (1, 4, 16)) for n in windowed],
        key=repr,
    )
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])  # read only


def test_every_split_count_a_decode_may_pick_is_compiled_at_start(monkeypatch):
    monkeypatch.setattr(decode_kernel, "_num_sms", lambda device: 132)  # an H200's
    cuda = torch.device("cuda")
    for max_context in (64, 256, 257, 600, 1024, 4096, 32768, 131072):
        counts = decode_kernel.split_counts_up_to(max_context)
        for num_seqs in (1, 2, 3, 5, 8, 13, 16, 17, 33, 64, 256):
            for kv_heads in (1, 2, 4, 8):
                picked = decode_kernel._default_num_splits(num_seqs, kv_heads, max_context, cuda)
                assert picked in counts, (num_seqs, kv_heads, max_context, picked, counts)
