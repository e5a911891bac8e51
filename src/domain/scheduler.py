"""Continuous batching: which sequences run in the next forward pass.

Every step, running sequences decode one token each and waiting sequences join, in arrival
order, while the batch has room (`max_batch_size`), the step has token budget
(`max_num_batched_tokens`) and the cache has blocks. When a decode cannot get a block the
newest running sequence is preempted (its blocks freed, recomputed later) so that the oldest
requests always make progress and nothing is lost.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_allocator import BlockAllocator, num_blocks_for
from .errors import OutOfBlocks
from .sequence import FinishReason, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int
    max_num_batched_tokens: int
    max_model_len: int


@dataclass
class StepPlan:
    """The sequences of one forward pass; each computes `seq.num_new_tokens` tokens."""

    seqs: list[Sequence]
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(seq.num_new_tokens for seq in self.seqs)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, config: SchedulerConfig, allocator: BlockAllocator) -> None:
        self.config = config
        self.allocator = allocator
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.parked: dict[int, Sequence] = {}  # finished turns of live sessions, oldest first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        if (
            num_blocks_for(seq.num_tokens + 1, self.allocator.block_size)
            > self.allocator.num_blocks
        ):
            raise OutOfBlocks(
                f"a sequence of {seq.num_tokens} tokens needs more KV blocks than the cache has "
                f"({self.allocator.num_blocks} of {self.allocator.block_size} tokens); raise "
                "cache_max_entry_count or shorten the prompt"
            )
        self.parked.pop(seq.seq_id, None)
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> StepPlan:
        plan = StepPlan(seqs=[])
        self._schedule_decodes(plan)
        self._schedule_prefills(plan)
        return plan

    def _schedule_decodes(self, plan: StepPlan) -> None:
        kept: list[Sequence] = []
        queue = deque(self.running)
        while queue:
            seq = queue.popleft()
            while not self.allocator.can_append(seq) and self._evict_parked():
                pass
            while not self.allocator.can_append(seq):
                victim = queue.pop() if queue else seq
                self._preempt(victim, plan)
                if victim is seq:
                    break
            else:
                self.allocator.append_slot(seq)
                kept.append(seq)
        self.running = kept
        plan.seqs.extend(kept)

    def _schedule_prefills(self, plan: StepPlan) -> None:
        budget = self.config.max_num_batched_tokens - plan.num_tokens
        while self.waiting and len(self.running) < self.config.max_batch_size:
            seq = self.waiting[0]
            # A prompt longer than the whole budget still runs, alone in its step.
            too_big = seq.num_new_tokens > budget and plan.seqs
            while not too_big and not self.allocator.can_allocate(seq) and self._evict_parked():
                pass
            if too_big or not self.allocator.can_allocate(seq):
                break
            self.waiting.popleft()
            self.allocator.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan.seqs.append(seq)
            budget -= seq.num_new_tokens

    def _evict_parked(self) -> bool:
        """Free the oldest parked session's cache; its next turn recomputes. False if none."""
        if not self.parked:
            return False
        seq = self.parked.pop(next(iter(self.parked)))
        self.allocator.free(seq)
        return True

    def drop(self, seq: Sequence) -> None:
        """End a session: its parked blocks go back to the pool."""
        if self.parked.pop(seq.seq_id, None) is not None:
            self.allocator.free(seq)

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        self.allocator.free(seq)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        plan.preempted.append(seq)
        self.num_preemptions += 1

    def postprocess(self, plan: StepPlan, token_ids: list[int]) -> list[Sequence]:
        """Append each sampled token; free and return the sequences that finished."""
        finished = []
        for seq, token_id in zip(plan.seqs, token_ids, strict=True):
            if seq.is_finished:  # aborted while the step ran
                continue
            seq.append_token(token_id)
            if seq.is_finished:
                finished.append(seq)
        for seq in finished:
            self._release(seq)
        return finished

    def abort(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        seq.finish(FinishReason.ABORT)
        self._release(seq)

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq.keep_cache and seq.finish_reason is not FinishReason.ABORT and seq.block_table:
            self.parked[seq.seq_id] = seq
        else:
            self.allocator.free(seq)
