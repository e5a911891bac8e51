"""CUDA graphs of the decode step: captured once per batch-size bucket, replayed with padding.

A decode step of an 8B model launches hundreds of small kernels; replaying a graph removes
the CPU's launch cost between them. Inputs live in static buffers sized for the largest
bucket (`DecodeInputs`: one pinned host buffer, one copy a step); a step of B sequences
writes its rows, pads to the next bucket (padding rows write to no slot and attend to one
cached token) and replays. Logits stay inside the graph; sampling runs after it, per step.
"""

from __future__ import annotations

import bisect
import gc
import logging
from collections.abc import Callable

import torch

from .....domain.sequence import Sequence
from ..backends.attention_metadata import AttentionMetadata
from ..models.base import CausalLM
from .decode_inputs import DecodeInputs
from .lora_pool import AdapterPool

logger = logging.getLogger(__name__)


def bucket_sizes(max_batch_size: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, max_batch_size + 1, 16))
    return sorted({s for s in sizes if s <= max_batch_size} | {max_batch_size})


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[tuple[torch.Tensor, ...]],
        cos: torch.Tensor,
        sin: torch.Tensor,
        max_batch_size: int,
        max_blocks_per_seq: int,
        block_size: int,
        before_replay: Callable[[int, torch.Tensor], None] | None = None,
        lora: AdapterPool | None = None,
    ) -> None:
        """`before_replay(bucket, staged inputs)`: called with each replay's inputs on the
        device, before it (tensor parallelism: rank 0 sends them to the other ranks)."""
        self.model = model
        self.before_replay = before_replay
        self.lora = lora  # its hooks read per-row adapter slots from rows the graphs capture
        self.kv_caches = kv_caches
        self.cos, self.sin = cos, sin
        self.sizes = bucket_sizes(max_batch_size)
        self.inputs = DecodeInputs(self.sizes[-1], max_blocks_per_seq, block_size, cos.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.pool = None

    def _forward(self, size: int) -> torch.Tensor:
        inputs = self.inputs
        meta = AttentionMetadata(
            slot_mapping=inputs.slot_mapping[:size],
            block_tables=inputs.block_tables[:size],
            context_lens=inputs.context_lens[:size],
            query_lens=[1] * size,
            context_lens_list=[],
            is_decode=True,
            num_cached_list=[],
        )
        positions = inputs.positions[:size]
        if self.lora is not None:
            self.lora.batch.use_graph_rows(size)
        hidden = self.model(
            inputs.input_ids[:size], self.cos[positions], self.sin[positions], self.kv_caches, meta
        )
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Largest bucket first, so smaller graphs reuse its memory pool.

        No garbage collection during capture: an engine closed earlier in this process may
        leave pinned host buffers in reference cycles, and freeing pinned memory queries CUDA
        events, which invalidates a capture in progress. They are collected first instead."""
        gc.collect()
        torch.cuda.synchronize()
        collecting = gc.isenabled()
        gc.disable()
        try:
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
        finally:
            if collecting:
                gc.enable()
        logger.info("captured decode CUDA graphs for batch sizes %s", self.sizes)

    def can_run(self, seqs: list[Sequence], lag: int = 0) -> bool:
        return self.inputs.fits(seqs, lag)

    def run(
        self,
        seqs: list[Sequence],
        lag: int = 0,
        ids_from: tuple[torch.Tensor, list[int]] | None = None,
    ) -> torch.Tensor:
        """Logits [num_seqs, vocab] of one decode step of `seqs` (one new token each; `lag` and
        `ids_from` as in `DecodeInputs.load`, for a step started ahead)."""
        size = self.sizes[bisect.bisect_left(self.sizes, len(seqs))]
        self.inputs.load(seqs, lag, ids_from)
        if self.lora is not None:
            self.lora.prepare_graph(seqs)
        if self.before_replay is not None:
            self.before_replay(size, self.inputs.staged)
        return self.replay(size)[: len(seqs)]

    def replay(self, size: int) -> torch.Tensor:
        """Replay bucket `size` over the inputs already staged; its logits [size, vocab]."""
        self.graphs[size].replay()
        return self.logits[size]

    def release(self) -> None:
        """Free the graphs, their memory pool and their static buffers (the engine closed);
        `sizes` stays, for what reports on a closed engine."""
        self.graphs.clear()
        self.logits.clear()
        self.pool = None
        self.model, self.kv_caches, self.lora = None, [], None  # type: ignore[assignment]
        self.inputs = None  # type: ignore[assignment]
