"""CUDA graphs of the decode step: captured once per batch-size bucket, replayed with padding.

A decode step of an 8B model launches hundreds of small kernels; replaying a graph removes
the CPU's launch cost between them. Inputs live in static buffers sized for the largest
bucket; a step of B sequences copies its inputs in, pads to the next bucket (padding rows
write to no slot and attend to one cached token) and replays. Logits stay inside the graph;
sampling runs after it, per step.
"""

from __future__ import annotations

import bisect
import logging

import torch

from .attention import AttentionMetadata
from .llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def bucket_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch_size + 1, 16))
    return sorted({s for s in sizes if s <= max_batch_size} | {max_batch_size})


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        cos: torch.Tensor,
        sin: torch.Tensor,
        max_batch_size: int,
        max_blocks_per_seq: int,
    ) -> None:
        self.model = model
        self.kv_caches = kv_caches
        self.cos, self.sin = cos, sin
        self.sizes = bucket_sizes(max_batch_size)
        device = cos.device
        n = self.sizes[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(n, max_blocks_per_seq, dtype=torch.int64, device=device)
        self.context_lens = torch.ones(n, dtype=torch.int64, device=device)
        self.max_blocks_per_seq = max_blocks_per_seq
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.pool = None

    def _forward(self, size: int) -> torch.Tensor:
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
            query_lens=[1] * size,
            context_lens_list=[],
            is_decode=True,
            num_cached_list=[],
        )
        positions = self.positions[:size]
        hidden = self.model(
            self.input_ids[:size], self.cos[positions], self.sin[positions], self.kv_caches, meta
        )
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest bucket first, so smaller graphs reuse its memory pool."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):
                self._forward(size)  # warm-up: Triton compiles and autotunes outside the graph
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                    self.logits[size] = self._forward(size)
                self.pool = graph.pool() if self.pool is None else self.pool
                self.graphs[size] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, num_seqs: int, max_blocks: int) -> bool:
        return num_seqs <= self.sizes[-1] and max_blocks <= self.max_blocks_per_seq

    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        """Logits [num_seqs, vocab] of one decode step."""
        num_seqs = input_ids.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, num_seqs)]
        width = meta.block_tables.shape[1]
        self.input_ids[:num_seqs].copy_(input_ids)
        self.positions[:num_seqs].copy_(positions)
        self.slot_mapping[:num_seqs].copy_(meta.slot_mapping)
        self.slot_mapping[num_seqs:size].fill_(-1)
        self.block_tables[:num_seqs, :width].copy_(meta.block_tables)
        self.context_lens[:num_seqs].copy_(meta.context_lens)
        self.context_lens[num_seqs:size].fill_(1)
        self.graphs[size].replay()
        return self.logits[size][:num_seqs]
