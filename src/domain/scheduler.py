"""Continuous batching with split-and-fuse prefill: which tokens run in the next forward pass.

Every step, running sequences that decode take one token each; prefills (new or unfinished)
share what is left of the step's token budget (`max_num_batched_tokens`) in chunks, so a very
long prompt never stalls the decoding batch. Sequences join in arrival order while the batch
has room (`max_batch_size`) and the cache has blocks. When blocks run out, parked sessions are
evicted first (least recently used), then the newest running sequence is preempted, so the
oldest requests always progress and nothing is lost. A preempted sequence is swapped out to the
host pool when there is one with room (its K/V copied, swapped back in ahead of new admissions,
nothing recomputed), else its blocks are freed and it is recomputed later.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from .block_allocator import BlockAllocator, num_blocks_for
from .errors import OutOfBlocks
from .host_blocks import BlockPairs, HostBlockAllocator
from .sampling_params import SamplingParams
from .sequence import FinishReason, ImageSpan, Sequence, SequenceStatus


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int
    max_num_batched_tokens: int
    max_model_len: int
    # Plan each all-decode step's successor too (`StepPlan.forecast`), for a runner that starts
    # it before this step's tokens reach the host.
    forecast_decodes: bool = False
    # LoRA adapters the runner holds at once (0: no limit); a request for another adapter
    # waits until a running one's adapter is no longer in use.
    max_adapters: int = 0
    # New prompts wait while a busy batch decodes: up to `prefill_interval` steps when the
    # batch is full, proportionally fewer when it is not, none when nothing runs (LMDeploy
    # 0.6.5's dynamic prefill interval). Fewer, fuller prefill steps for a little TTFT;
    # 0 admits at once. Prompts that would fill a whole prefill step's token budget are
    # admitted at once whatever the interval: waiting cannot make that step any fuller.
    prefill_interval: int = 0
    # A waiting prompt joins only if the blocks left free after it still hold each running
    # sequence's next `admission_headroom` tokens (fewer where its length limit comes first).
    # Without it, a full cache admits into the blocks a request freed and the running
    # sequences' growth preempts the newcomer a few steps later, its prompt computed for nothing.
    admission_headroom: int = 0


@dataclass
class SchedulerCounters:
    prefill_tokens: int = 0  # prompt tokens computed (prefix-cache hits excluded)
    decode_tokens: int = 0
    steps: int = 0
    preemptions: int = 0  # by either means; those not swapped out are recomputed
    session_evictions: int = 0
    swapped_out_seqs: int = 0
    swapped_in_seqs: int = 0
    swapped_out_blocks: int = 0
    swapped_in_blocks: int = 0
    step_failures: int = 0  # steps the model runner raised on (their sequences end in ERROR)
    finished: dict[str, int] = field(default_factory=dict)  # sequences by finish reason

    @property
    def recompute_preemptions(self) -> int:
        return self.preemptions - self.swapped_out_seqs


@dataclass
class StepPlan:
    """The work of one forward pass: `seqs[i]` computes `num_scheduled[i]` tokens from its
    `num_cached_tokens` on. A sequence whose chunk does not reach its last token is still
    prefilling: its sampled token is discarded. The runner copies `blocks_to_swap_out`
    (device -> host), then `blocks_to_swap_in` (host -> device), before the forward pass:
    this step may already reuse the device blocks a swap-out gave back."""

    seqs: list[Sequence]
    num_scheduled: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    blocks_to_swap_out: BlockPairs = field(default_factory=list)
    blocks_to_swap_in: BlockPairs = field(default_factory=list)
    # The next step's decode batch if no sequence stops on the token this step samples and no
    # request arrives meanwhile (empty when the next step is known to differ). Each of these
    # sequences already holds the block of its next token, so a runner may start that step
    # before this one's tokens are on the host, and drop it if the real next plan differs.
    forecast: list[Sequence] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.num_scheduled:
            self.num_scheduled = [seq.num_new_tokens for seq in self.seqs]

    @property
    def num_tokens(self) -> int:
        return sum(self.num_scheduled)

    def add(self, seq: Sequence, num_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_scheduled.append(num_tokens)

    def __bool__(self) -> bool:
        """Worth running: something to compute, or K/V to copy before blocks change hands."""
        return bool(self.seqs or self.blocks_to_swap_out or self.blocks_to_swap_in)


def _is_decoding(seq: Sequence) -> bool:
    return seq.num_output_tokens > 0 and seq.num_new_tokens == 1


def _waits_for_fork_parent(seq: Sequence) -> bool:
    """A sibling choice whose shared prompt is still being computed by its parent."""
    return seq.fork_parent is not None and not seq.fork_parent.is_finished


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        allocator: BlockAllocator,
        host: HostBlockAllocator | None = None,
    ) -> None:
        self.config = config
        self.allocator = allocator
        self.host = host  # None: preemption always recomputes
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.swapped: deque[Sequence] = deque()  # swapped-out sequences, oldest request first
        self.parked: dict[int, Sequence] = {}  # finished turns of live sessions, oldest first
        self.counters = SchedulerCounters()
        self._steps_without_admission = 0
        # The step just forecast runs as forecast: waiting prompts join the step after it.
        self._hold_admission = False

    @property
    def num_preemptions(self) -> int:
        return self.counters.preemptions

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

    def resume(
        self,
        seq: Sequence,
        token_ids: list[int],
        sampling: SamplingParams,
        images: tuple[ImageSpan, ...] = (),
    ) -> None:
        """The next turn of a session: keep the cached blocks of the common prefix, queue it."""
        seq.continue_with(token_ids, sampling, images)
        block_size = self.allocator.block_size
        keep = num_blocks_for(seq.num_cached_tokens, block_size)
        # The new turn overwrites the block where the common prefix ends: keep it only if no
        # one else can see it (shared through the prefix cache, it goes back instead).
        if (
            keep
            and seq.num_cached_tokens % block_size
            and not self.allocator.is_private(seq.block_table[keep - 1])
        ):
            keep -= 1
        self.allocator.truncate(seq, keep)
        del seq.block_hashes[seq.num_cached_tokens // block_size :]
        self.add(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # -- planning -------------------------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = self._plan()
        if not plan and not self.running and self._evict_queued_caches():
            stalled, plan = plan, self._plan()
            plan.preempted[:0] = stalled.preempted
        self.counters.steps += bool(plan)
        if self.config.forecast_decodes:
            plan.forecast = self._forecast(plan)
        return plan

    def _plan(self) -> StepPlan:
        plan = StepPlan(seqs=[])
        budget = self.config.max_num_batched_tokens
        budget = self._schedule_running(plan, budget)
        # A step that had to preempt has no blocks to spare; swapped-out sequences come back
        # before anything new is admitted, so they cannot starve.
        if not plan.preempted:
            budget = self._schedule_swapped(plan, budget)
        admitted = 0
        hold, self._hold_admission = self._hold_admission, False
        if not hold and not self.swapped and self._admission_due(len(self.running), budget):
            admitted = self._schedule_waiting(plan, budget)
        if admitted:
            self._steps_without_admission = 0
        elif plan:
            self._steps_without_admission += 1
        return plan

    def _admission_due(self, running: int, budget: int) -> bool:
        """Whether waiting prompts may join a step that runs `running` sequences and has
        `budget` prompt tokens left: once the interval has passed, or at once when they
        would fill that budget (a burst of requests fills the batch in back-to-back full
        prefill steps; the interval only spaces out the small refills as requests finish)."""
        wait = self.config.prefill_interval * running / self.config.max_batch_size
        return self._steps_without_admission >= wait or self._fills_budget(running, budget)

    def _fills_budget(self, running: int, budget: int) -> bool:
        """Whether the prompts the free batch slots could admit hold `budget` tokens."""
        if budget <= 0:
            return False
        tokens = 0
        for seq in itertools.islice(self.waiting, self.config.max_batch_size - running):
            tokens += seq.num_new_tokens
            if tokens >= budget:
                return True
        return False

    def _forecast(self, plan: StepPlan) -> list[Sequence]:
        """The sequences of this all-decode step that do not reach a length limit with its
        token, when the next step will run exactly them unless one stops on that token: no
        prefill, no swap, nothing waiting that the next step could admit. Allocates the block
        of each one's next token now, and forecasts nothing when the free blocks do not cover
        them all (the next step may have to preempt)."""
        if plan.blocks_to_swap_out or plan.blocks_to_swap_in or plan.preempted or self.swapped:
            return []
        if len(plan.seqs) != len(self.running) or not all(
            num == 1 and _is_decoding(seq)
            for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True)
        ):
            return []
        nexts = [seq for seq in plan.seqs if not seq.ends_by_length_within(1)]
        could_join = (
            bool(self.waiting)
            and len(nexts) < self.config.max_batch_size
            and self._admission_due(len(nexts), self.config.max_num_batched_tokens)
        )
        if could_join and self._next_prompt_may_fit(plan.seqs, nexts):
            return []  # the next step admits a waiting request
        growing = [s for s in nexts if not self.allocator.covers(s, s.num_tokens + 1)]
        needed = sum(self.allocator.blocks_needed(seq, seq.num_tokens + 1) for seq in growing)
        if needed > self.allocator.num_free_blocks:
            return []
        for seq in growing:
            self.allocator.allocate(seq, seq.num_tokens + 1)
        # A prompt that waits for blocks could still fit next step if this step's tokens end a
        # request (a stop token frees its blocks): it joins the step after, so the forecast holds.
        self._hold_admission = could_join
        return nexts

    def _next_prompt_may_fit(self, seqs: list[Sequence], nexts: list[Sequence]) -> bool:
        """Whether the oldest admissible waiting prompt may be admitted next step, counting as
        free the blocks of this step's sequences that end by length and, with parked sessions
        to evict, everything (an overestimate: in doubt, the next step stays free to admit)."""
        if self.parked:
            return True
        head = self._next_admissible()
        if head is None or _waits_for_fork_parent(head):
            return False  # nothing the next step could admit
        ending = [s for s in seqs if s.ends_by_length_within(1)]
        free = self.allocator.num_free_blocks + sum(len(s.block_table) for s in ending)
        tokens = max(self.config.admission_headroom, 1)  # at least their next token's block
        return self._fits_beside_growth(self.allocator.blocks_needed(head), nexts, tokens, free)

    def _schedule_running(self, plan: StepPlan, budget: int) -> int:
        """Decodes first (one token each, whatever the budget), then unfinished prefills."""
        queue = deque(sorted(self.running, key=lambda s: not _is_decoding(s)))
        kept: set[int] = set()
        while queue:
            seq = queue.popleft()
            decoding = _is_decoding(seq)
            chunk = 1 if decoding else min(seq.num_new_tokens, budget)
            if chunk <= 0:
                kept.add(id(seq))  # a prefill that waits for budget keeps its blocks
                continue
            if not self._make_room(seq, seq.num_cached_tokens + chunk, queue, plan):
                continue  # seq itself was preempted
            kept.add(id(seq))
            plan.add(seq, chunk)
            budget -= 0 if decoding else chunk
        self.running = [s for s in self.running if id(s) in kept]
        return budget

    def _make_room(
        self, seq: Sequence, num_tokens: int, queue: deque[Sequence], plan: StepPlan
    ) -> bool:
        """Allocate blocks for seq, evicting parked sessions, then preempting the newest
        running sequences. False when seq itself had to be preempted."""
        if self.allocator.covers(seq, num_tokens):  # most decode steps: nothing to allocate
            return True
        while not self.allocator.can_allocate(seq, num_tokens):
            if self._evict_parked():
                continue
            victim = queue.pop() if queue else seq
            self._preempt(victim, plan)
            if victim is seq:
                return False
        self.allocator.allocate(seq, num_tokens)
        return True

    def _schedule_swapped(self, plan: StepPlan, budget: int) -> int:
        """Swap sequences back in, oldest preempted first, while blocks and the batch allow;
        each continues from its `num_cached_tokens` in this very step."""
        while self.swapped and len(self.running) < self.config.max_batch_size:
            seq = self.swapped[0]
            decoding = _is_decoding(seq)
            chunk = 1 if decoding else min(seq.num_new_tokens, budget)
            num_tokens = seq.num_cached_tokens + chunk
            while not self.host.can_swap_in(seq, self.allocator, num_tokens):
                if not self._evict_parked():
                    return budget
            self.swapped.popleft()
            pairs = self.host.swap_in(seq, self.allocator)
            self.allocator.allocate(seq, num_tokens)
            plan.blocks_to_swap_in.extend(pairs)
            self.counters.swapped_in_seqs += 1
            self.counters.swapped_in_blocks += len(pairs)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            if chunk > 0:  # a prefill with no budget left keeps its blocks for the next step
                plan.add(seq, chunk)
                budget -= 0 if decoding else chunk
        return budget

    def _schedule_waiting(self, plan: StepPlan, budget: int) -> int:
        """Admit waiting sequences while the batch, the budget and the blocks allow; how many."""
        admitted = 0
        while self.waiting and len(self.running) < self.config.max_batch_size and budget > 0:
            seq = self._next_admissible()
            if seq is None:
                break  # back-pressure: every adapter slot is in use by running requests
            if _waits_for_fork_parent(seq):
                break  # a sibling choice waits for the shared prompt to be computed
            seq.fork_parent = None  # none, or it ended before its prompt: compute alone
            while not self._can_admit(seq) and self._evict_parked():
                pass
            if not self._can_admit(seq):
                break
            self.waiting.remove(seq)
            # Allocating reuses cached prefix blocks, which shortens what is left to compute.
            self.allocator.allocate(seq)
            chunk = min(seq.num_new_tokens, budget)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            plan.add(seq, chunk)
            budget -= chunk
            admitted += 1
        return admitted

    def _growth_blocks(self, seq: Sequence, tokens: int) -> int:
        """Blocks a running sequence needs for its next `tokens` tokens (fewer where its length
        limit comes first)."""
        left = min(
            tokens,
            seq.sampling.max_new_tokens - seq.num_output_tokens,
            seq.max_len - seq.num_tokens,
        )
        if left <= 0 or self.allocator.covers(seq, seq.num_tokens + left):
            return 0
        return self.allocator.blocks_needed(seq, seq.num_tokens + left)

    def _fits_beside_growth(
        self, blocks: int, seqs: list[Sequence], tokens: int, free: int
    ) -> bool:
        """Whether `blocks` fit in `free` beside the next `tokens` tokens of each of `seqs`:
        against a bound first (ceil(tokens / block_size) + 1 blocks a sequence), so that a
        cache with room never walks the batch on the step's path, then exactly."""
        bound = len(seqs) * (-(-tokens // self.allocator.block_size) + 1) if tokens else 0
        if blocks + bound <= free:
            return True
        return blocks + sum(self._growth_blocks(s, tokens) for s in seqs) <= free

    def _can_admit(self, seq: Sequence) -> bool:
        if not self.running:  # nothing grows: the reserve would only hold the cache idle
            return self.allocator.can_allocate(seq)
        return self._fits_beside_growth(
            self.allocator.blocks_needed(seq),
            self.running,
            self.config.admission_headroom,
            self.allocator.num_free_blocks,
        )

    def _next_admissible(self) -> Sequence | None:
        """The oldest waiting sequence whose LoRA adapter can be resident: a request for an
        adapter without a free slot lets later requests for resident adapters (or the base
        model) pass instead of blocking the queue."""
        return next((seq for seq in self.waiting if self._adapter_fits(seq)), None)

    def _adapter_fits(self, seq: Sequence) -> bool:
        limit = self.config.max_adapters
        if not limit or seq.adapter_name is None:
            return True
        in_use = {s.adapter_name for s in self.running} - {None}
        return seq.adapter_name in in_use or len(in_use) < limit

    def _evict_parked(self) -> bool:
        """Free the oldest parked session's cache; its next turn recomputes. False if none."""
        if not self.parked:
            return False
        seq = self.parked.pop(next(iter(self.parked)))
        self.allocator.free(seq)
        self.counters.session_evictions += 1
        return True

    def _evict_queued_caches(self) -> bool:
        """Give back the blocks that resumed sessions keep while they queue (their turns
        recompute). Called when nothing can run: those blocks may be what the sequences ahead
        of them wait for, a wait that would never end. False if none kept any."""
        freed = False
        for seq in reversed(self.waiting):
            if seq.block_table:
                self.allocator.free(seq)
                seq.reset_for_recompute()
                self.counters.session_evictions += 1
                freed = True
        return freed

    def _preempt(self, seq: Sequence, plan: StepPlan) -> None:
        if seq in plan.seqs:
            index = plan.seqs.index(seq)
            del plan.seqs[index], plan.num_scheduled[index]
        if seq in self.running:
            self.running.remove(seq)
        if self.host is not None and self.host.can_swap_out(seq, self.allocator):
            pairs = self.host.swap_out(seq, self.allocator)
            plan.blocks_to_swap_out.extend(pairs)
            seq.status = SequenceStatus.SWAPPED
            later = (i for i, s in enumerate(self.swapped) if s.seq_id > seq.seq_id)
            self.swapped.insert(next(later, len(self.swapped)), seq)
            self.counters.swapped_out_seqs += 1
            self.counters.swapped_out_blocks += len(pairs)
        else:
            self.allocator.free(seq)
            seq.reset_for_recompute()
            self.waiting.appendleft(seq)
        plan.preempted.append(seq)
        self.counters.preemptions += 1

    # -- after the forward pass -----------------------------------------------------------------
    def postprocess(self, plan: StepPlan, token_ids: list[int]) -> list[Sequence]:
        """Advance each sequence; append sampled tokens; free and return those that finished."""
        finished = []
        for seq, num, token_id in zip(plan.seqs, plan.num_scheduled, token_ids, strict=True):
            if seq.is_finished:  # aborted while the step ran
                continue
            prompt_done = False
            if seq.num_cached_tokens + num < seq.num_tokens:  # a prefill chunk, more to come
                seq.num_cached_tokens += num
                self.counters.prefill_tokens += num
            else:
                prompt_done = seq.num_output_tokens == 0
                self._count_final(seq, num)
                seq.append_token(token_id)
            self.allocator.register_computed(seq)
            if prompt_done:
                self._fork_siblings(seq)
            if seq.is_finished:
                finished.append(seq)
        for seq in finished:
            self._release(seq)
        return finished

    def _fork_siblings(self, parent: Sequence) -> None:
        """The parent's prompt is computed: its waiting siblings reference its blocks now."""
        for child in self.waiting:
            if child.fork_parent is parent:
                child.fork_parent = None
                if not child.block_table:  # not yet forked (or preempted and reset)
                    self.allocator.fork(parent, child)

    def _count_final(self, seq: Sequence, num: int) -> None:
        if seq.num_output_tokens == 0:
            self.counters.prefill_tokens += num
        else:
            self.counters.decode_tokens += num

    def abort(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        seq.finish(FinishReason.ABORT)
        self._release(seq)

    def fail_step(self, plan: StepPlan) -> list[Sequence]:
        """The runner raised on `plan`: its sequences end with ERROR and give their blocks
        back (their K/V may be half-written); every other sequence goes on. Returns those ended."""
        self.counters.step_failures += 1
        failed = [seq for seq in plan.seqs if not seq.is_finished]
        for seq in failed:
            seq.finish(FinishReason.ERROR)
            self._release(seq)
        return failed

    def drop(self, seq: Sequence) -> None:
        """End a session: its parked blocks go back to the pool."""
        if self.parked.pop(seq.seq_id, None) is not None:
            self.allocator.free(seq)

    def _release(self, seq: Sequence) -> None:
        reason = seq.finish_reason.value if seq.finish_reason else "none"
        self.counters.finished[reason] = self.counters.finished.get(reason, 0) + 1
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.swapped:
            self.swapped.remove(seq)
            self.host.free(seq)
        ended_well = seq.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        if seq.keep_cache and ended_well and seq.block_table:
            self.parked[seq.seq_id] = seq
        else:
            self.allocator.free(seq)
