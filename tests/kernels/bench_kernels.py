"""GPU timings of every kernel against its bytes/FLOPs floor (not a test: run it directly).

python tests/kernels/bench_kernels.py
"""

from __future__ import annotations

import itertools
from functools import partial

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from lmdeploy.kernels.kv_cache_write import kv_cache_write
from lmdeploy.kernels.paged_decode_attention import paged_decode_attention
from lmdeploy.kernels.paged_prefill_attention import paged_prefill_attention
from lmdeploy.kernels.rms_norm import fused_add_rms_norm, rms_norm
from lmdeploy.kernels.rotary import rotary
from lmdeploy.kernels.silu_and_mul import silu_and_mul

DEV, BF16 = "cuda", torch.bfloat16
H, KV, D = 32, 8, 128


def _ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _row(name: str, ms: float, gbytes: float = 0.0, tflop: float = 0.0) -> None:
    rate = f"{gbytes / ms * 1e3:8.0f} GB/s" if gbytes else f"{tflop / ms * 1e3:8.1f} TFLOP/s"
    print(f"{name:44s} {ms * 1e3:9.1f} us {rate}")


def _paged(lens: list[int], block_size: int = 16):
    per_seq = [-(-n // block_size) for n in lens]
    num_blocks = sum(per_seq)
    k_cache = torch.randn(num_blocks, block_size, KV, D, dtype=BF16, device=DEV)
    v_cache = torch.randn_like(k_cache)
    tables = torch.zeros(len(lens), max(per_seq), dtype=torch.int32)
    perm = torch.randperm(num_blocks, dtype=torch.int32).tolist()
    for i, n in enumerate(per_seq):
        tables[i, :n], perm = torch.tensor(perm[:n], dtype=torch.int32), perm[n:]
    return k_cache, v_cache, tables.to(DEV), torch.tensor(lens, dtype=torch.int32, device=DEV)


def bench_decode() -> None:
    for seqs, ctx in [(64, 2048), (8, 4096), (1, 8192), (256, 512)]:
        k_cache, v_cache, tables, lens = _paged([ctx] * seqs)
        q = torch.randn(seqs, H, D, dtype=BF16, device=DEV)
        gb = 2 * seqs * ctx * KV * D * 2 / 1e9
        for splits in [None, 1]:
            fn = partial(paged_decode_attention, q, k_cache, v_cache, tables, lens, 0.1, splits)
            ms = _ms(fn)
            _row(f"decode {seqs}x{ctx} splits={splits}", ms, gbytes=gb)


def bench_prefill() -> None:
    for q_lens in [[2048] * 4, [512] * 16, [8192]]:
        k_cache, v_cache, tables, lens = _paged(q_lens)
        cu = torch.tensor(list(itertools.accumulate(q_lens, initial=0)), device=DEV)
        q = torch.randn(sum(q_lens), H, D, dtype=BF16, device=DEV)
        tflop = sum(4 * H * D * n * n / 2 for n in q_lens) / 1e12
        args = (q, k_cache, v_cache, tables, cu, lens, max(q_lens), 0.1)
        ms = _ms(partial(paged_prefill_attention, *args))
        _row(f"prefill {len(q_lens)}x{q_lens[0]}", ms, tflop=tflop)
        qs = q[: q_lens[0]].transpose(0, 1)[None]
        ks = torch.randn(1, KV, q_lens[0], D, dtype=BF16, device=DEV)
        fn = partial(F.scaled_dot_product_attention, qs, ks, ks, is_causal=True, enable_gqa=True)
        _row(f"  torch sdpa causal, {len(q_lens)} x one seq", _ms(fn) * len(q_lens), tflop=tflop)


def bench_window_and_softcap() -> None:
    """Mistral-7B's 4096 window over 8k contexts: the floor counts only the window's keys, so
    a kernel that masked instead of skipping would show half the GB/s (and TFLOP/s) here.
    Gemma 2's cap of 50 should cost next to nothing over the plain rows of bench_decode."""
    window = 4096
    for seqs, ctx in [(1, 8192), (16, 8192), (64, 8192)]:
        k_cache, v_cache, tables, lens = _paged([ctx] * seqs)
        q = torch.randn(seqs, H, D, dtype=BF16, device=DEV)
        fn = partial(paged_decode_attention, q, k_cache, v_cache, tables, lens, 0.1)
        gb = 2 * seqs * window * KV * D * 2 / 1e9
        _row(f"decode {seqs}x{ctx} window={window}", _ms(partial(fn, sliding_window=window)), gb)
        gb = 2 * seqs * ctx * KV * D * 2 / 1e9
        _row(f"decode {seqs}x{ctx} softcap=50", _ms(partial(fn, logit_softcap=50.0)), gb)
    for q_lens in [[8192], [2048] * 4]:
        k_cache, v_cache, tables, lens = _paged(q_lens)
        cu = torch.tensor(list(itertools.accumulate(q_lens, initial=0)), device=DEV)
        q = torch.randn(sum(q_lens), H, D, dtype=BF16, device=DEV)
        args = (q, k_cache, v_cache, tables, cu, lens, max(q_lens), 0.1)
        # Keys seen: query t sees min(t + 1, window) of them.
        seen = sum(sum(min(t + 1, window) for t in range(n)) for n in q_lens)
        ms = _ms(partial(paged_prefill_attention, *args, sliding_window=window))
        _row(
            f"prefill {len(q_lens)}x{q_lens[0]} window={window}", ms, tflop=4 * H * D * seen / 1e12
        )
        tflop = sum(4 * H * D * n * n / 2 for n in q_lens) / 1e12
        ms = _ms(partial(paged_prefill_attention, *args, logit_softcap=50.0))
        _row(f"prefill {len(q_lens)}x{q_lens[0]} softcap=50", ms, tflop=tflop)


def bench_elementwise() -> None:
    x = torch.randn(4096, 4096, dtype=BF16, device=DEV)
    r, w = torch.randn_like(x), torch.randn(4096, dtype=BF16, device=DEV)
    _row("rms_norm 4096x4096", _ms(lambda: rms_norm(x, w, 1e-6)), gbytes=2 * x.numel() * 2 / 1e9)
    ms = _ms(lambda: fused_add_rms_norm(x, r, w, 1e-6))
    _row("fused_add_rms_norm 4096x4096", ms, gbytes=4 * x.numel() * 2 / 1e9)
    gu = torch.randn(4096, 2 * 14336, dtype=BF16, device=DEV)
    _row(
        "silu_and_mul 4096x14336", _ms(lambda: silu_and_mul(gu)), gbytes=1.5 * gu.numel() * 2 / 1e9
    )
    q = torch.randn(4096, H, D, dtype=BF16, device=DEV)
    k = torch.randn(4096, KV, D, dtype=BF16, device=DEV)
    cos, sin = torch.randn(8192, D, device=DEV), torch.randn(8192, D, device=DEV)
    pos = torch.randint(0, 8192, (4096,), device=DEV)
    ms = _ms(lambda: rotary(q, k, cos, sin, pos, inplace=True))
    _row("rotary in place 4096 tok", ms, gbytes=2 * (q.numel() + k.numel()) * 2 / 1e9)
    k_cache = torch.randn(4096 * 2 // 16, 16, KV, D, dtype=BF16, device=DEV)
    v_cache = torch.randn_like(k_cache)
    slots = torch.randperm(k_cache.shape[0] * 16, device=DEV)[:4096]
    ms = _ms(lambda: kv_cache_write(k, k, k_cache, v_cache, slots))
    _row("kv_cache_write 4096 tok", ms, gbytes=4 * k.numel() * 2 / 1e9)


def sweep_prefill() -> None:
    """Tile shapes for the prefill kernel on the 4 x 2048 and 16 x 512 cases."""
    import lmdeploy.kernels.paged_prefill_attention as mod

    for q_lens in [[2048] * 4, [512] * 16]:
        k_cache, v_cache, tables, lens = _paged(q_lens)
        cu = torch.tensor(list(itertools.accumulate(q_lens, initial=0)), device=DEV)
        q = torch.randn(sum(q_lens), H, D, dtype=BF16, device=DEV)
        tflop = sum(4 * H * D * n * n / 2 for n in q_lens) / 1e12
        args = (q, k_cache, v_cache, tables, cu, lens, max(q_lens), 0.1)
        for cfg in itertools.product([64, 128], [32, 64, 128], [4, 8], [2, 3, 4]):
            mod._prefill_config = lambda *_, c=cfg: c
            try:
                ms = _ms(partial(paged_prefill_attention, *args))
            except Exception as e:  # out of shared memory, say
                print(cfg, type(e).__name__)
                continue
            _row(f"prefill {len(q_lens)}x{q_lens[0]} {cfg}", ms, tflop=tflop)


def sweep_decode() -> None:
    for seqs, ctx in [(64, 2048), (8, 4096), (1, 8192)]:
        k_cache, v_cache, tables, lens = _paged([ctx] * seqs)
        q = torch.randn(seqs, H, D, dtype=BF16, device=DEV)
        gb = 2 * seqs * ctx * KV * D * 2 / 1e9
        for splits, block_n in itertools.product([None, 16, 32], [32, 64, 128]):
            fn = partial(paged_decode_attention, q, k_cache, v_cache, tables, lens, 0.1)
            ms = _ms(partial(fn, num_splits=splits, block_n=block_n))
            _row(f"decode {seqs}x{ctx} splits={splits} block_n={block_n}", ms, gbytes=gb)


if __name__ == "__main__":
    import sys

    if "--sweep" in sys.argv:
        sweep_decode()
        sweep_prefill()
        sys.exit()
    bench_decode()
    bench_prefill()
    bench_window_and_softcap()
    bench_elementwise()
