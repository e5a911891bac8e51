"""Banned ids (bad_token_ids, ignore_eos's stop tokens, min_new_tokens' eos) reach exactly
their own rows, whether one set covers the whole batch or rows differ."""

from __future__ import annotations

import torch

from lmdeploy.adapters.engines.pytorch.sampling.batch import SamplingBatch
from lmdeploy.adapters.engines.pytorch.sampling.sampler import sample
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.sequence import Sequence


def _seq(**sampling) -> Sequence:
    return Sequence([1, 2, 3], SamplingParams(temperature=0, **sampling), max_len=64)


def _greedy_after_bans(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
    return sample(logits.clone(), SamplingBatch.from_seqs(seqs, logits.device)).tolist()


def test_one_set_for_the_whole_batch():
    logits = torch.arange(10.0).repeat(3, 1)  # every row prefers 9, then 8, ...
    seqs = [_seq(bad_token_ids=(9, 8)) for _ in range(3)]
    assert _greedy_after_bans(seqs, logits) == [7, 7, 7]


def test_rows_with_different_sets_and_none():
    logits = torch.arange(10.0).repeat(4, 1)
    seqs = [
        _seq(bad_token_ids=(9,)),
        _seq(),
        _seq(bad_token_ids=(9, 8, 7)),
        _seq(bad_token_ids=(9,)),
    ]
    assert _greedy_after_bans(seqs, logits) == [8, 9, 6, 8]


def test_min_new_tokens_bans_eos_and_stop_ids_until_reached():
    logits = torch.arange(10.0).repeat(2, 1)
    early = _seq(min_new_tokens=2, stop_token_ids=(8,))
    early.eos_token_ids = frozenset({9})
    done = _seq(min_new_tokens=0, stop_token_ids=(8,))
    done.eos_token_ids = frozenset({9})
    assert _greedy_after_bans([early, done], logits) == [7, 9]
