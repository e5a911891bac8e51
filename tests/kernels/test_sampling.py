"""The fused sampling kernel against the torch path's math (full sort, same noise), on random
logits of irregular vocabularies, rows mixing greedy, top-k, top-p and min-p."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.sampling import exponential_noise, fused_sample, fused_sample_ref

from ._util import DEVICE, cuda_only, gpu_cases

# batch, vocab
CASES = [
    (1, 1000),
    (5, 1000),
    (3, 3001),
    (2, 32003),
    *gpu_cases((16, 32003), (64, 128256), (256, 128256), (7, 151936)),
]


def _params(batch: int, vocab: int, gen: torch.Generator):
    """Rows cycle through: greedy, top-k, top-p, min-p, all three, plain sampling."""
    temperature = torch.rand(batch, generator=gen) * 1.5 + 0.2
    top_k = torch.zeros(batch, dtype=torch.int64)
    top_p = torch.ones(batch)
    min_p = torch.zeros(batch)
    for row in range(batch):
        kind = row % 6
        if kind == 0:
            temperature[row] = 0.0
        if kind in (1, 4):
            top_k[row] = int(torch.randint(1, min(vocab, 200), (1,), generator=gen))
        if kind in (2, 4):
            top_p[row] = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        if kind in (3, 4):
            min_p[row] = float(torch.rand(1, generator=gen)) * 0.2
    if batch == 1:  # one row: make it exercise every filter
        temperature[0], top_k[0], top_p[0], min_p[0] = 0.7, 40, 0.8, 0.02
    return [c.to(DEVICE) for c in (temperature, top_k, top_p, min_p)]


def _logits(batch: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    # A peaked head over a flat tail, like a language model's; some banned tokens (-inf).
    logits = torch.randn(batch, vocab, generator=gen) * 2
    logits[:, :20] += torch.randn(batch, 20, generator=gen) * 4
    logits[:, 7] = -float("inf")
    return logits.to(DEVICE)


@pytest.mark.parametrize(("batch", "vocab"), CASES)
def test_matches_reference_with_the_same_noise(batch, vocab):
    gen = torch.Generator().manual_seed(batch * 7919 + vocab)
    logits = _logits(batch, vocab, gen)
    params = _params(batch, vocab, gen)
    seeds = torch.randint(0, 2**40, (batch,), generator=gen).to(DEVICE)
    noise = exponential_noise(seeds, vocab)
    before = logits.clone()
    ours = fused_sample(logits, *params, seeds)
    assert torch.equal(logits, before), "the kernel must not write the logits"
    ref = fused_sample_ref(logits, *params, noise)
    if torch.equal(ours, ref):
        return
    # Only a token at the edge of top-p or min-p may differ (the cumulative mass is summed in
    # another order): then ours is the draw of a slightly looser or stricter filter.
    temperature, top_k, top_p, min_p = params
    eps = 1e-4
    loose = fused_sample_ref(
        logits.double(), temperature, top_k, top_p + eps, (min_p - eps).clamp_min(0), noise
    )
    strict = fused_sample_ref(logits.double(), temperature, top_k, top_p - eps, min_p + eps, noise)
    for row in range(batch):
        assert ours[row] in (ref[row], loose[row], strict[row]), f"row {row} drew {ours[row]}"
    assert (ours != ref).float().mean() <= 0.1


def test_greedy_rows_take_the_first_argmax():
    logits = torch.zeros(3, 1000, device=DEVICE)
    logits[0, [5, 9]] = 3.0  # a tie: the first index wins, as torch.argmax
    logits[1, 999] = 1.0
    logits[2, 0] = -1.0
    zeros = torch.zeros(3, device=DEVICE)
    out = fused_sample(logits, zeros, zeros.long(), zeros + 1, zeros, zeros.long())
    assert out.tolist() == [5, 999, 1]


def test_a_seeded_row_draws_the_same_whoever_shares_the_batch():
    gen = torch.Generator().manual_seed(3)
    logits = _logits(4, 1000, gen)
    t = torch.full((4,), 1.0, device=DEVICE)
    k, p, mp = torch.zeros(4, dtype=torch.int64, device=DEVICE), t.clone(), t * 0
    seeds = torch.tensor([11, 12, 13, 14], device=DEVICE)
    batch = fused_sample(logits, t, k, p, mp, seeds)
    alone = fused_sample(logits[2:3].contiguous(), t[:1], k[:1], p[:1], mp[:1], seeds[2:3])
    assert batch[2] == alone[0]
    assert fused_sample(logits, t, k, p, mp, seeds).tolist() == batch.tolist()


def test_noise_is_exponential():
    """The kernel's noise: Exp(1) (Kolmogorov-Smirnov distance), different for each seed."""
    noise = exponential_noise(torch.arange(64, device=DEVICE) * 1009 + 3, 1000).double().cpu()
    values = noise.flatten().sort().values
    cdf = 1 - torch.exp(-values)
    ecdf = torch.arange(1, values.numel() + 1, dtype=torch.float64) / values.numel()
    assert (cdf - ecdf).abs().max() < 1.6 / values.numel() ** 0.5  # p < 0.01
    assert not torch.equal(noise[0], noise[1])


@cuda_only  # thousands of programs: minutes in the interpreter
def test_draws_follow_the_filtered_distribution():
    """Many seeds over one row: empirical frequencies against the kept probabilities."""
    rows, vocab = 4000, 64
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(1, vocab, generator=gen) * 1.5).repeat(rows, 1).to(DEVICE)
    t = torch.full((rows,), 0.9, device=DEVICE)
    k = torch.full((rows,), vocab // 2, dtype=torch.int64, device=DEVICE)
    p = torch.full((rows,), 0.9, device=DEVICE)
    mp = torch.full((rows,), 0.01, device=DEVICE)
    draws = fused_sample(logits, t, k, p, mp, torch.arange(rows, device=DEVICE) * 7 + 1)
    # The exact filtered distribution, from the reference's own kept set.
    probs = torch.zeros(vocab, dtype=torch.float64)
    for token in range(vocab):
        one_hot = torch.full((1, vocab), float("inf"), device=DEVICE)
        one_hot[0, token] = 1.0  # noise that picks `token` if and only if it is kept
        pick = fused_sample_ref(logits[:1], t[:1], k[:1], p[:1], mp[:1], one_hot)
        probs[token] = float(pick[0] == token)
    kept = probs.bool()
    scaled = logits[0].double().cpu() / 0.9
    probs = torch.where(kept, scaled.softmax(0), 0.0)
    probs /= probs.sum()
    counts = torch.bincount(draws.cpu(), minlength=vocab).double()
    assert counts[~kept].sum() == 0, "a filtered-out token was drawn"
    sigma = (rows * probs * (1 - probs)).sqrt()
    assert ((counts - rows * probs).abs() <= 5 * sigma + 1).all()


def test_engine_glue_seeds_each_row_from_its_request():
    """The adapter's call: per-row columns from the engine's SamplingBatch; a request's
    random_seed fixes its draw, alone or in a batch; rows without one draw afresh."""
    from lmdeploy.adapters.engines.pytorch.sampling import fused as fused_sampling
    from lmdeploy.adapters.engines.pytorch.sampling.batch import SamplingBatch
    from lmdeploy.domain.sampling_params import SamplingParams
    from lmdeploy.domain.sequence import Sequence

    def seqs(seeds):
        return [
            Sequence([1, 2], SamplingParams(temperature=1.0, top_k=0, random_seed=s), 8)
            for s in seeds
        ]

    logits = torch.zeros(3, 1000, device=DEVICE)  # uniform: the draw is all noise
    batch = SamplingBatch.from_seqs(seqs([5, None, 6]), DEVICE)
    first = fused_sampling.sample(logits, batch)
    again = fused_sampling.sample(logits, SamplingBatch.from_seqs(seqs([5, None, 6]), DEVICE))
    alone = fused_sampling.sample(logits[:1], SamplingBatch.from_seqs(seqs([5]), DEVICE))
    assert first[0] == again[0] == alone[0] and first[2] == again[2]
    assert first[0] != first[2]
