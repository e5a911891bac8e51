"""Batched sampling in one launch: temperature, top-k, top-p, min-p and the exponential race,
per-row parameters, no sort.

Each row (one program) draws from the distribution the engine's torch path draws from
(`sampling.sample`): softmax(logits / T) restricted to the tokens that survive top-k (rank <
k), top-p (the mass ranked strictly above the token is <= top_p) and min-p (p >= min_p *
p_max), the best token always kept; then argmax(p / E) with E ~ Exp(1) per token. A row with
T == 0 takes the argmax of its logits.

Top-k and top-p both keep the tokens at or above a threshold value, so the kept set is
{x >= max(tau_k, tau_p)} with min-p applied per token: no sort is needed, only the threshold.
It is found by bisection over the int32 keys that order float32 values: a pass counts the
tokens at or above a candidate key and sums their probability; the candidate is below the
threshold while count >= k or mass > top_p. The search stops as soon as no token lies between
its bounds (at most 32 passes; a top-k of 50 over 128k tokens takes about 10). So a sampling
row costs 2 + (search) passes over its logits, a greedy row one.

The noise is drawn inside the kernel: E = -log(U), U = Philox(seed of the row, token id). A row
with its own seed is therefore reproducible whoever shares the batch; `exponential_noise`
materializes the same numbers for tests and the reference.

Bytes: (passes) * B * vocab * 4 read (L2-resident for small B), B * 8 written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_INT32_MIN = -(2**31)


@triton.jit
def _key(x):
    """float32 -> int32 with the same order (NaN aside)."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _noise(seed, offs):
    """E ~ Exp(1) per token id, from the row's Philox stream."""
    return -tl.log(tl.rand(seed, offs))


@triton.jit
def _argmax_pass(base, vocab, BLOCK: tl.constexpr):
    """First index of the largest raw logit (torch.argmax's tie rule)."""
    offs = tl.arange(0, BLOCK)
    best = tl.full((), -float("inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int64)
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        x = tl.load(base + idx, mask=idx < vocab, other=-float("inf"))
        m = tl.max(x, axis=0)
        i = tl.min(tl.where(x == m, idx, vocab), axis=0).to(tl.int64)
        take = m > best
        best_idx = tl.where(take, i, best_idx)
        best = tl.where(take, m, best)
    return best_idx


@triton.jit
def _sample_kernel(
    logits_ptr,
    out_ptr,
    temperature_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    seed_ptr,
    vocab,
    stride_row,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    t = tl.load(temperature_ptr + row)
    if t == 0:
        tl.store(out_ptr + row, _argmax_pass(base, vocab, BLOCK))
    else:
        t = tl.maximum(t, 1e-5)
        offs = tl.arange(0, BLOCK)
        # Pass 1: the max and the log-sum-exp of the scaled logits (online).
        m = tl.full((), -float("inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            x = tl.load(base + idx, mask=idx < vocab, other=-float("inf"))
            x = tl.math.div_rn(x, t)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        top_k = tl.load(top_k_ptr + row)
        top_p = tl.load(top_p_ptr + row)
        min_p = tl.load(min_p_ptr + row)
        use_k = (top_k > 0) & (top_k < vocab)
        use_p = top_p < 1.0
        # Bisection: `lo` always below or at the threshold, `hi` above it.
        lo = tl.full((), -(2**31), tl.int64)
        hi = _key(m).to(tl.int64) + 1
        count_lo = tl.full((), 0, tl.int64) + vocab
        count_hi = tl.full((), 0, tl.int64)
        hi = tl.where(use_k | use_p, hi, lo + 1)  # no search: every token passes
        while (hi - lo > 1) & (count_lo != count_hi):
            mid = (lo + hi) >> 1
            count = tl.full((), 0, tl.int64)
            mass = tl.full((), 0.0, tl.float32)
            for start in range(0, vocab, BLOCK):
                idx = start + offs
                x = tl.load(base + idx, mask=idx < vocab, other=-float("inf"))
                x = tl.math.div_rn(x, t)
                above = (_key(x).to(tl.int64) >= mid) & (idx < vocab)
                count += tl.sum(above.to(tl.int64), axis=0)
                mass += tl.sum(tl.where(above, tl.exp(x - lse), 0.0), axis=0)
            below = (use_k & (count >= top_k)) | (use_p & (mass > top_p))
            lo = tl.where(below, mid, lo)
            count_lo = tl.where(below, count, count_lo)
            hi = tl.where(below, hi, mid)
            count_hi = tl.where(below, count_hi, count)
        # Final pass: the exponential race over the kept tokens.
        p_floor = min_p * tl.exp(m - lse)
        seed = tl.load(seed_ptr + row)
        best = tl.full((), -1.0, tl.float32)
        best_idx = tl.full((), 0, tl.int64)
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            x = tl.load(base + idx, mask=idx < vocab, other=-float("inf"))
            x = tl.math.div_rn(x, t)
            p = tl.exp(x - lse)
            kept = (_key(x).to(tl.int64) >= lo) & (p >= p_floor) & (idx < vocab)
            score = tl.where(kept, p / _noise(seed, idx), -1.0)
            b = tl.max(score, axis=0)
            i = tl.min(tl.where(score == b, idx, vocab), axis=0).to(tl.int64)
            take = b > best
            best_idx = tl.where(take, i, best_idx)
            best = tl.where(take, b, best)
        tl.store(out_ptr + row, best_idx)


def _check(logits: torch.Tensor, *columns: torch.Tensor) -> None:
    assert logits.dim() == 2 and logits.dtype == torch.float32, "logits must be [B, vocab] fp32"
    assert logits.stride(1) == 1, "logits need unit stride on the vocabulary"
    for c in columns:
        assert c.shape == (logits.shape[0],), f"per-row columns must be [{logits.shape[0]}]"
        assert c.device == logits.device, "per-row columns must be on the logits' device"


def fused_sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """logits [B, vocab] fp32; per row: temperature (0 = greedy), top_k (0 = off, int),
    top_p, min_p (fp32) and the Philox seed (int64). Returns token ids [B] int64."""
    _check(logits, temperature, top_k, top_p, min_p, seeds)
    num_rows, vocab = logits.shape
    out = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    if num_rows == 0:
        return out
    _sample_kernel[(num_rows,)](
        logits,
        out,
        temperature.float(),
        top_k.long(),
        top_p.float(),
        min_p.float(),
        seeds.long(),
        vocab,
        logits.stride(0),
        BLOCK=min(triton.next_power_of_2(vocab), 4096),
        num_warps=8,
    )
    return out


@triton.jit
def _noise_kernel(out_ptr, seed_ptr, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(seed_ptr + row)
    tl.store(out_ptr + row * vocab + idx, _noise(seed, idx), mask=idx < vocab)


def exponential_noise(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """The Exp(1) noise [B, vocab] that `fused_sample` draws for these seeds."""
    out = torch.empty(seeds.shape[0], vocab, dtype=torch.float32, device=seeds.device)
    block = min(triton.next_power_of_2(vocab), 1024)
    _noise_kernel[(seeds.shape[0], triton.cdiv(vocab, block))](
        out, seeds.long(), vocab, BLOCK=block
    )
    return out


def fused_sample_ref(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Plain torch, as the engine's torch path computes it (full sort), with given noise."""
    vocab = logits.shape[-1]
    greedy = logits.argmax(dim=-1)
    scaled = logits / temperature.clamp_min(1e-5)[:, None]
    values, ids = scaled.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= torch.where(top_k > 0, top_k, vocab)[:, None]
    probs = (values - scaled.logsumexp(dim=-1, keepdim=True)).exp()
    drop |= (probs.cumsum(dim=-1) - probs) > top_p[:, None]
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False
    kept = values.masked_fill(drop, -float("inf")).softmax(dim=-1)
    pick = (kept / noise.gather(1, ids)).argmax(dim=-1)
    return torch.where(temperature == 0, greedy, ids.gather(1, pick[:, None]).squeeze(1))
