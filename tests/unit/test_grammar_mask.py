"""The runner's grammar step over fake constraints: which rows are masked, and what they accept."""

import torch

from lmdeploy.adapters.engines.pytorch.sampling.batch import SamplingBatch
from lmdeploy.adapters.engines.pytorch.sampling.grammar_mask import GrammarMask
from lmdeploy.adapters.engines.pytorch.sampling.sampler import sample
from lmdeploy.application.response_format import CONSTRAINT
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import StepPlan
from lmdeploy.domain.sequence import Sequence, SequenceStatus

VOCAB = 70  # not a multiple of 32: the last bitmask word is partly padding


class AllowList:
    """A constraint that allows a fixed set of tokens and records what it accepts."""

    vocab_size = VOCAB

    def __init__(self, allowed: set[int]) -> None:
        self.allowed = allowed
        self.accepted: list[int] = []

    @property
    def num_accepted(self) -> int:
        return len(self.accepted)

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        for token in self.allowed:
            word, bit = divmod(token, 32)
            bitmask[row, word] |= torch.tensor(1 << bit, dtype=torch.int64).to(torch.int32)

    def accept(self, token_id: int) -> bool:
        self.accepted.append(token_id)
        return token_id in self.allowed

    def is_terminated(self) -> bool:
        return False


def seq(constraint=None, num_prompt=3, num_output=0) -> Sequence:
    extra = {CONSTRAINT: constraint} if constraint is not None else {}
    s = Sequence(list(range(1, num_prompt + 1)), SamplingParams(temperature=0, extra=extra), 100)
    s.status = SequenceStatus.RUNNING
    for t in range(num_output):
        s.append_token(10 + t)
    return s


def test_only_constrained_rows_that_sample_are_masked_and_fed():
    decoding, prefilled, free = AllowList({5, 64}), AllowList({7}), None
    chunked = AllowList({9})
    seqs = [seq(decoding), seq(prefilled), seq(free), seq(chunked, num_prompt=6)]
    plan = StepPlan(seqs, [3, 3, 3, 2])  # the last one's chunk stops short of its prompt
    grammar = GrammarMask.from_plan(plan)
    assert grammar.rows == [0, 1]
    logits = torch.randn(4, VOCAB + 6)  # wider than the grammar's vocabulary
    before = logits.clone()
    grammar.apply(logits)
    for row, allowed in [(0, {5, 64}), (1, {7})]:
        kept = torch.isfinite(logits[row]).nonzero().flatten().tolist()
        assert set(kept) == allowed
        assert torch.equal(logits[row, sorted(allowed)], before[row, sorted(allowed)])
    assert torch.equal(logits[2:], before[2:])  # free and still-prefilling rows untouched
    grammar.accept([64, 7, 3, 4])
    assert decoding.accepted == [64] and prefilled.accepted == [7] and chunked.accepted == []


def test_sampling_with_the_mask_picks_an_allowed_token_after_the_other_rules():
    constraint = AllowList({4, 6})
    s = seq(constraint)
    s.sampling = SamplingParams(temperature=0, bad_token_ids=(4,), extra={CONSTRAINT: constraint})
    plan = StepPlan([s], [3])
    logits = torch.zeros(1, VOCAB)
    logits[0, 4], logits[0, 6], logits[0, 1] = 9.0, 1.0, 20.0
    grammar = GrammarMask.from_plan(plan)
    picked = sample(logits, SamplingBatch.from_seqs([s], logits.device), grammar.apply)
    assert picked.tolist() == [6]  # 1 is outside the grammar, 4 is a bad token


def test_a_re_prefilled_sequence_is_not_fed_what_its_matcher_already_took():
    constraint = AllowList({5})
    constraint.accepted = [10, 11]  # it took the two outputs before preemption
    preempted = seq(constraint, num_output=2)
    preempted.num_cached_tokens = 0  # recompute: the whole prompt and both outputs again
    grammar = GrammarMask.from_plan(StepPlan([preempted]))
    grammar.accept([5])
    assert constraint.accepted == [10, 11, 5]


def test_a_constraint_out_of_step_with_its_sequence_is_left_alone(caplog):
    constraint = AllowList({5})
    lagging = seq(constraint, num_output=2)  # two outputs, none accepted
    assert GrammarMask.from_plan(StepPlan([lagging], [1])) is None
    assert "grammar state at token 0, sequence at 2" in caplog.text
