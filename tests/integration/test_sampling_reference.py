"""The sampler against independent references on the same logits: transformers' logits
processors for the penalties and filters, and a chi-square goodness-of-fit test for the draws."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmdeploy.adapters.engines.pytorch.sampling.batch import SamplingBatch
from lmdeploy.adapters.engines.pytorch.sampling.sampler import (
    _apply_token_rules,
    _candidates,
    sample,
)
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence, SequenceStatus

VOCAB = 300


def _seq(params: SamplingParams, token_ids: list[int] | None = None, num_output: int = 0):
    prompt = token_ids or [1, 2, 3]
    seq = Sequence(prompt_token_ids=prompt, sampling=params, max_len=10_000)
    seq.status = SequenceStatus.RUNNING
    for t in range(num_output):
        seq.token_ids.append(t)  # output tokens, without stop checks
    return seq


def _filtered(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Our filters' result over the whole vocabulary: logits / T, -inf where dropped."""
    scaled = logits / batch.temperature.clamp_min(1e-5)[:, None]
    ids, values = _candidates(scaled, batch)
    if ids is None:
        return values
    return torch.full_like(scaled, -float("inf")).scatter(1, ids, values)


def _reference(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """transformers' warpers, chained as generate() chains them."""
    scores = TemperatureLogitsWarper(p.temperature)(None, row[None].clone())
    if p.top_k > 0:
        scores = TopKLogitsWarper(p.top_k)(None, scores)
    if p.top_p < 1:
        scores = TopPLogitsWarper(p.top_p)(None, scores)
    if p.min_p > 0:
        scores = MinPLogitsWarper(p.min_p)(None, scores)
    return scores[0]


ROWS = [
    SamplingParams(temperature=1.0, top_k=5),
    SamplingParams(temperature=0.7, top_p=0.8),
    SamplingParams(temperature=1.3, min_p=0.05),
    SamplingParams(temperature=0.9, top_k=40, top_p=0.9),
    SamplingParams(temperature=1.0, top_k=20, top_p=0.6, min_p=0.1),
    SamplingParams(temperature=1.5),
    SamplingParams(temperature=0.5, top_p=0.95, min_p=0.02),
]


@pytest.mark.parametrize("all_top_k", [False, True], ids=["sorted", "topk_path"])
def test_filters_keep_the_tokens_and_distribution_of_transformers_warpers(all_top_k):
    torch.manual_seed(0)
    rows = [p for p in ROWS if p.top_k > 0] if all_top_k else ROWS
    logits = torch.randn(len(rows), VOCAB) * 3
    batch = SamplingBatch.from_seqs([_seq(p) for p in rows], torch.device("cpu"))
    assert bool(batch.max_top_k) == all_top_k  # both code paths of _candidates are covered
    ours = _filtered(logits.clone(), batch)
    for i, p in enumerate(rows):
        theirs = _reference(logits[i], p)
        kept = torch.isfinite(ours[i])
        assert torch.equal(kept, torch.isfinite(theirs)), f"row {i} {p}: kept sets differ"
        filtering = p.top_k > 0 or p.top_p < 1 or p.min_p > 0
        assert kept.sum() >= 1 and bool(kept.sum() < VOCAB) == filtering
        torch.testing.assert_close(ours[i].softmax(-1), theirs.softmax(-1), atol=1e-6, rtol=1e-5)


def test_repetition_penalty_matches_transformers_per_row():
    torch.manual_seed(1)
    penalties = [1.0, 1.3, 0.7, 2.0]
    histories = [[5, 6, 7], [1, 2, 2, 9, 250], [3, 4, 100, 101], [0, 299, 150]]
    seqs = [
        _seq(SamplingParams(repetition_penalty=r, temperature=1.0), h)
        for r, h in zip(penalties, histories, strict=True)
    ]
    logits = torch.randn(len(seqs), VOCAB) * 2
    ours = _apply_token_rules(logits.clone(), SamplingBatch.from_seqs(seqs, torch.device("cpu")))
    for i, (r, h) in enumerate(zip(penalties, histories, strict=True)):
        theirs = RepetitionPenaltyLogitsProcessor(r)(torch.tensor([h]), logits[i : i + 1].clone())
        torch.testing.assert_close(ours[i], theirs[0], atol=0, rtol=0)


def _chi2_quantile(q: float, df: int) -> float:
    """The chi-square quantile by bisection on its CDF, the regularized lower gamma P(df/2, x/2)."""
    lo, hi = 0.0, df + 50.0 * math.sqrt(2 * df) + 50
    for _ in range(200):
        mid = (lo + hi) / 2
        cdf = torch.special.gammainc(
            torch.tensor(df / 2, dtype=torch.float64), torch.tensor(mid / 2, dtype=torch.float64)
        )
        lo, hi = (mid, hi) if cdf < q else (lo, mid)
    return (lo + hi) / 2


def test_chi2_quantile_matches_known_values():
    assert _chi2_quantile(0.95, 1) == pytest.approx(3.841, abs=1e-3)
    assert _chi2_quantile(0.999, 7) == pytest.approx(24.322, abs=1e-3)


def _draw(logits_row: torch.Tensor, params: SamplingParams, num: int) -> torch.Tensor:
    """`num` draws as rows of one sample() call: the token counts over the vocabulary."""
    seqs = [_seq(params) for _ in range(num)]
    batch = SamplingBatch.from_seqs(seqs, torch.device("cpu"))
    ids = sample(logits_row.repeat(num, 1), batch)
    return torch.bincount(ids, minlength=logits_row.numel()).double()


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    support = probs > 0
    assert counts[~support].sum() == 0, "drew a token the distribution excludes"
    expected = probs[support] * counts.sum()
    return float(((counts[support] - expected) ** 2 / expected).sum()), int(support.sum()) - 1


SMALL = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], dtype=torch.float32)
DRAWS = 20_000


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.5),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0, top_p=0.7),
        SamplingParams(temperature=1.5, top_k=6, top_p=0.9, min_p=0.1),
    ],
    ids=["T0.5", "T1", "T1.5", "topk3", "topp0.7", "combined"],
)
def test_draws_fit_the_filtered_softmax(params):
    torch.manual_seed(1234)
    counts = _draw(SMALL, params, DRAWS)
    probs = _reference(SMALL, params).softmax(-1).double()
    stat, df = _chi2(counts, probs)
    assert stat < _chi2_quantile(0.999, df), f"chi2={stat:.1f} over {df} df"


def test_the_chi_square_check_rejects_a_wrong_temperature():
    """The test above can fail: draws at T=1 do not fit softmax(logits / 0.5)."""
    torch.manual_seed(1234)
    counts = _draw(SMALL, SamplingParams(temperature=1.0), DRAWS)
    stat, df = _chi2(counts, (SMALL / 0.5).softmax(-1).double())
    assert stat > _chi2_quantile(0.999, df)


def test_a_seeded_row_draws_the_same_whatever_shares_its_batch():
    torch.manual_seed(0)
    logits = torch.randn(VOCAB) * 2
    seeded = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, random_seed=42)
    others = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, top_k=10),
        SamplingParams(temperature=1.2, top_p=0.5, random_seed=7),
    ]
    for step in range(5):  # the seed advances with the output position
        alone = sample(
            logits[None].clone(),
            SamplingBatch.from_seqs([_seq(seeded, num_output=step)], torch.device("cpu")),
        )
        seqs = [_seq(p, num_output=step) for p in others[:2]]
        seqs += [_seq(seeded, num_output=step), _seq(others[2], num_output=step)]
        mixed = sample(logits.repeat(4, 1), SamplingBatch.from_seqs(seqs, torch.device("cpu")))
        assert int(mixed[2]) == int(alone[0])
