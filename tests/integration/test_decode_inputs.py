"""The staged decode inputs (one pinned buffer, one copy) hold what the runner's general step
preparation builds from the same plan, padding rows included, across steps that shrink."""

from __future__ import annotations

import random

import torch

from lmdeploy.adapters.engines.pytorch.runner.decode_inputs import DecodeInputs
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import StepPlan
from lmdeploy.domain.sequence import Sequence

BLOCK_SIZE, MAX_BLOCKS, MAX_SEQS = 4, 6, 8


def _decoding_seqs(rng: random.Random, num: int) -> list[Sequence]:
    seqs = []
    blocks = rng.sample(range(100), num * MAX_BLOCKS)
    for i in range(num):
        length = rng.randrange(1, MAX_BLOCKS * BLOCK_SIZE)
        seq = Sequence([rng.randrange(1000) for _ in range(length)], SamplingParams(), 64)
        seq.num_cached_tokens = length - 1
        seq.block_table = blocks[i * MAX_BLOCKS : i * MAX_BLOCKS + -(-length // BLOCK_SIZE)]
        seqs.append(seq)
    return seqs


def _general(seqs: list[Sequence], lag: int = 0):
    """The runner's own (eager) preparation of the same step: the reference."""
    from lmdeploy.adapters.engines.pytorch.runner.runner import PytorchModelRunner

    runner = PytorchModelRunner.__new__(PytorchModelRunner)
    runner.device = torch.device("cpu")
    runner._cache = type("Cache", (), {"block_size": BLOCK_SIZE})()
    runner.rope = type("Rope", (), {"mrope_section": None})()  # one rotary position a token
    return runner._prepare(StepPlan(seqs, [1] * len(seqs)), lag)


def test_staged_rows_equal_the_general_preparation():
    rng = random.Random(0)
    inputs = DecodeInputs(MAX_SEQS, MAX_BLOCKS, BLOCK_SIZE, torch.device("cpu"))
    for num in (8, 3, 5, 1):  # shrinking batches leave rows that must be padded again
        seqs = _decoding_seqs(rng, num)
        assert inputs.fits(seqs)
        inputs.load(seqs)
        input_ids, positions, meta = _general(seqs)
        assert torch.equal(inputs.input_ids[:num], input_ids)
        assert torch.equal(inputs.positions[:num], positions)
        assert torch.equal(inputs.slot_mapping[:num], meta.slot_mapping)
        assert torch.equal(inputs.context_lens[:num], meta.context_lens)
        width = meta.block_tables.shape[1]
        for row, seq in enumerate(seqs):
            n = len(seq.block_table)
            assert inputs.block_tables[row, :n].tolist() == seq.block_table
            assert width >= n
        # Padding rows: no slot written, one token of context.
        assert (inputs.slot_mapping[num:] == -1).all()
        assert (inputs.context_lens[num:] == 1).all()


def test_fits_checks_batch_and_table_width():
    rng = random.Random(1)
    inputs = DecodeInputs(2, MAX_BLOCKS, BLOCK_SIZE, torch.device("cpu"))
    seqs = _decoding_seqs(rng, 3)
    assert not inputs.fits(seqs)
    assert inputs.fits(seqs[:2])
    seqs[0].block_table = list(range(MAX_BLOCKS + 1))
    assert not inputs.fits(seqs[:2])


def test_a_step_started_ahead_takes_the_next_position_and_device_tokens():
    rng = random.Random(2)
    inputs = DecodeInputs(MAX_SEQS, MAX_BLOCKS, BLOCK_SIZE, torch.device("cpu"))
    seqs = _decoding_seqs(rng, 5)
    spare = iter(range(200, 300))
    for seq in seqs:  # the scheduler's forecast holds the block of each one's next token
        while len(seq.block_table) * BLOCK_SIZE < seq.num_tokens + 1:
            seq.block_table.append(next(spare))
    assert inputs.fits(seqs, lag=1)
    tokens = torch.tensor([900 + i for i in range(7)])  # the previous step's samples
    rows = [6, 0, 3, 2, 5]
    for _ in range(2):  # both host buffers
        inputs.load(seqs, lag=1, ids_from=(tokens, rows))
        _, positions, meta = _general(seqs, lag=1)
        assert inputs.input_ids[:5].tolist() == [900 + r for r in rows]
        assert torch.equal(inputs.positions[:5], positions)
        assert positions.tolist() == [s.num_tokens for s in seqs]
        assert torch.equal(inputs.slot_mapping[:5], meta.slot_mapping)
        assert torch.equal(inputs.context_lens[:5], meta.context_lens)
    full = _decoding_seqs(random.Random(3), 1)[0]
    full.token_ids.extend([1] * (len(full.block_table) * BLOCK_SIZE - full.num_tokens))
    full.num_cached_tokens = full.num_tokens - 1  # its last block is full: no room ahead
    assert inputs.fits([full]) and not inputs.fits([full], lag=1)
