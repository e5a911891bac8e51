"""In-memory fakes of the ports, for unit tests of the domain and the application."""

from __future__ import annotations

from collections.abc import Sequence

from lmdeploy.application.ports import CacheGeometry, StepOutput
from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig, StepPlan


class CountingRunner:
    """A 'model' whose next token is the previous one plus one (mod vocab)."""

    decodes_ahead = False

    def __init__(self, num_blocks: int = 64, block_size: int = 4, vocab_size: int = 100) -> None:
        self._cache = CacheGeometry(num_blocks, block_size)
        self.vocab_size = vocab_size
        self.plans: list[list[tuple[int, int]]] = []  # (seq_id, num_new_tokens) per step
        self.idles = 0  # times the engine loop ran out of work after a step

    @property
    def cache(self) -> CacheGeometry:
        return self._cache

    def step(self, plan: StepPlan) -> StepOutput:
        for seq in plan.seqs:
            needed = -(-seq.num_tokens // self._cache.block_size)
            assert len(seq.block_table) >= needed, "ran a sequence without enough KV blocks"
        self.plans.append([(s.seq_id, s.num_new_tokens) for s in plan.seqs])
        return StepOutput([(s.token_ids[-1] + 1) % self.vocab_size for s in plan.seqs])

    def idle(self) -> None:
        self.idles += 1


class CharTokenizer:
    """Token id i is the character chr(ord('a') + i % 26); id 0 is EOS and decodes to ''."""

    eos_token_ids = frozenset({0})
    vocab_size = 100

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [(ord(c) - ord("a")) % self.vocab_size for c in text]  # ids within the vocabulary

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(
            chr(ord("a") + t % 26) for t in token_ids if t != 0 or not skip_special_tokens
        )

    def convert_ids_to_tokens(self, token_ids: Sequence[int]) -> list[str]:
        return [self.decode([t]) for t in token_ids]

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        return "".join(m["content"] for m in messages)


def build_scheduler(num_blocks: int, block_size: int, **config: object) -> Scheduler:
    """A scheduler over a fresh block allocator: batches of 8, 64 prompt tokens a step and
    1000-token sequences unless `config` (SchedulerConfig's fields) says otherwise."""
    fields = dict(max_batch_size=8, max_num_batched_tokens=64, max_model_len=1000) | config
    return Scheduler(SchedulerConfig(**fields), BlockAllocator(num_blocks, block_size))
