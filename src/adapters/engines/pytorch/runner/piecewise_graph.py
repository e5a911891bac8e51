"""Piecewise CUDA graphs for the steps that carry prompt tokens (prefill and mixed steps).

A decode step replays one whole-model graph (cuda_graph.py); a step with prompt tokens ran
eagerly, paying the host's launch cost of every layer. On an H200 with an 8B model a mixed
step of ~450 prompt tokens beside ~75 decodes took ~40 ms eagerly against ~20 ms replayed
this way: its GPU work is shorter than the launches (benchmark/NOTES.md, session 16).
Attention is what stops one graph from covering such a step: its kernels and their metadata
depend on the step's mix of prefill and decode rows. Everything else is row by row and
depends on the token count only. So, as vLLM v1 does, the model is cut at each attention:

- The seam is `paged_attention` (layers/attention.py), which every family's `Attention`
  calls. While a capture runs, the call goes to a hook (layers/graph_break.py) that ends the
  current segment's graph, records the attention site, starts the next segment's graph and
  returns a static output buffer. A model of L layers is L + 1 segments per token bucket.
- Rotary and the K/V write into the paged cache (`rotate_qk`) stay inside the segments: they
  read static `slot_mapping` rows, and padding rows carry slot -1, which the CUDA rotary
  kernel skips (as the decode graphs' padding does), so no scratch block is needed. A
  quantized cache is written by the attention call itself, which runs eagerly on the real rows.
- A replay of n tokens in bucket b >= n stages the step's ids, cos/sin rows and slots into
  static buffers, replays segment 0, then per layer runs the real `paged_attention` on the
  site's q/k/v sliced to n with the step's own metadata, copies its result into the site's
  static output and replays the next segment; the caller reads the first n rows of the final
  hidden states. Every launch is on the current stream, so graphs and eager attention order.
- The sites' q/k/v and output live in buffers shared by every layer and bucket (layers and
  buckets run one after another), filled by a copy inside the segment: per-bucket, per-layer
  tensors kept alive would pin L x 4 activations a bucket (GBs at 8k tokens for an 8B model).
  Tensors flowing between segments inside one bucket (the residual stream) stay alive during
  its capture, so later segments do not reuse their memory; buckets share one pool, largest
  first, because only one bucket replays at a time.

Not taken (the eager path, as before): LoRA (its hooks read per-step rows this capture does
not stage), image rows (embeddings spliced into the input), steps that want extras
(output_logits, hidden states, ppl: they read every row's hidden state), tensor parallelism
(rank 0 would have to stage each segment's inputs to the other ranks), the CPU (no graphs,
and its C kernels are cheap to call), and steps of more than `MAX_TOKENS` tokens: their
kernels outlast their launches, so eager costs nothing there, while padding to a bucket does
(4147 tokens replayed in the 4608 bucket: 111 ms against 101 eagerly). `LMDEPLOY_PIECEWISE_GRAPHS=0`
turns the graphs off.

The graphs come from a factory (`torch.cuda.CUDAGraph` on CUDA) so that the driver logic
(segments, sites, padding, replay order) runs on the CPU under a fake that records ops.
"""

from __future__ import annotations

import bisect
import gc
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..backends.attention_metadata import AttentionMetadata
from ..layers.attention import paged_attention
from ..layers.graph_break import AttentionCall, breaking_at_attention
from ..models.base import CausalLM

logger = logging.getLogger(__name__)


class Graph(Protocol):
    """What the driver needs of a CUDA graph (`torch.cuda.CUDAGraph` has it)."""

    def capture_begin(self, pool: Any = None) -> None: ...
    def capture_end(self) -> None: ...
    def replay(self) -> None: ...
    def pool(self) -> Any: ...


GraphFactory = Callable[[], Graph]


MAX_TOKENS = 2048  # the largest bucket: steps of more tokens run eagerly (module docstring)


def enabled(device: torch.device, tensor_parallel: bool, lora: bool) -> bool:
    """Whether a runner captures piecewise graphs: on CUDA, at tp=1, without LoRA (see the
    module docstring), unless `LMDEPLOY_PIECEWISE_GRAPHS=0`."""
    if os.environ.get("LMDEPLOY_PIECEWISE_GRAPHS", "1") == "0":
        return False
    return device.type == "cuda" and not tensor_parallel and not lora


def token_buckets(max_tokens: int) -> list[int]:
    """Token counts to capture: fine steps where steps are short (padding costs little there,
    and host time is what dominates), coarser ones up to `max_tokens`, which is one of them."""
    fine = [16, 32, 48] + list(range(64, 513, 64))
    coarse = list(range(768, 2049, 256)) + list(range(3072, max_tokens + 1, 1024))
    return sorted({s for s in fine + coarse if s < max_tokens} | {max_tokens})


@dataclass
class _Site:
    """One attention call of a bucket: its static q/k/v and output (views of shared buffers)."""

    call: AttentionCall
    out: torch.Tensor

    def attend(self, n: int, meta: AttentionMetadata) -> None:
        """The real attention of the step's n rows, into the output the next segment reads."""
        c = self.call
        q, k, v = c.q[:n], c.k[:n], c.v[:n]
        out = paged_attention(
            q, k, v, c.k_cache, c.v_cache, meta, c.opts, c.kv_written, c.scale_zero
        )
        self.out[:n].copy_(out)


@dataclass
class _Bucket:
    segments: list[Graph]
    sites: list[_Site]
    hidden: torch.Tensor  # [size, hidden] the last segment's output


class PiecewiseGraphs:
    def __init__(
        self,
        model: CausalLM,
        kv_caches: list[tuple[torch.Tensor, ...]],
        rotary_dim: int,
        rotary_dtype: torch.dtype,
        max_tokens: int,
        device: torch.device,
        new_graph: GraphFactory | None = None,
    ) -> None:
        """`rotary_dim`/`rotary_dtype`: the width and dtype of a token's cos and sin rows."""
        self.model, self.kv_caches, self.device = model, kv_caches, device
        self.sizes = token_buckets(max_tokens)
        self.new_graph: GraphFactory = new_graph or torch.cuda.CUDAGraph
        size = self.sizes[-1]
        self.input_ids = torch.zeros(size, dtype=torch.int64, device=device)
        self.cos = torch.zeros(size, rotary_dim, dtype=rotary_dtype, device=device)
        self.sin = torch.zeros(size, rotary_dim, dtype=rotary_dtype, device=device)
        self.slot_mapping = torch.full((size,), -1, dtype=torch.int64, device=device)
        self._shared: dict[tuple, torch.Tensor] = {}  # (role, shape, dtype) -> buffer
        self.buckets: dict[int, _Bucket] = {}
        self.pool: Any = None
        self.replays = 0  # steps served, for tests and logs

    def fits(self, num_tokens: int) -> bool:
        return num_tokens <= self.sizes[-1]

    def _buffer(self, role: str, like: torch.Tensor, rows: int) -> torch.Tensor:
        """The first `rows` rows of the buffer shared by every site whose `role` tensor has
        `like`'s row shape and dtype; allocated by the largest bucket's warm-up, uncaptured."""
        key = (role, tuple(like.shape[1:]), like.dtype)
        if key not in self._shared:
            shape = (self.sizes[-1], *like.shape[1:])
            self._shared[key] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self._shared[key][:rows]

    def _forward(self, size: int, on_break: Callable[[], None]) -> tuple[torch.Tensor, list[_Site]]:
        """The model over the static inputs' first `size` rows, cut at each attention:
        `on_break()` runs between one segment and the next."""
        sites: list[_Site] = []

        def hook(call: AttentionCall) -> torch.Tensor:
            q = self._buffer("q", call.q, size).copy_(call.q)
            k = self._buffer("k", call.k, size).copy_(call.k)
            v = self._buffer("v", call.v, size).copy_(call.v)
            on_break()
            static = AttentionCall(
                q, k, v, call.k_cache, call.v_cache, call.opts, call.kv_written, call.scale_zero
            )
            sites.append(_Site(static, self._buffer("out", call.q, size)))
            return sites[-1].out

        meta = AttentionMetadata(  # the segments read only the slots (rotary's K/V write)
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.slot_mapping[:1].view(1, 1),
            context_lens=self.slot_mapping[:1],
            query_lens=[size],
            context_lens_list=[size],
            is_decode=False,
            num_cached_list=[0],
        )
        with breaking_at_attention(hook):
            hidden = self.model(
                self.input_ids[:size], self.cos[:size], self.sin[:size], self.kv_caches, meta
            )
        return hidden, sites

    def _capture_bucket(self, size: int) -> None:
        self._forward(size, lambda: None)  # warm-up: Triton compiles outside the graphs
        segments: list[Graph] = []
        open_: list[Graph] = []  # the segment whose capture is in progress, if any

        def begin() -> None:
            graph = self.new_graph()
            graph.capture_begin(pool=self.pool)
            segments.append(graph)
            open_.append(graph)

        def end() -> None:
            open_.pop().capture_end()
            if self.pool is None:  # the first segment's pool: every later one shares it
                self.pool = segments[0].pool()

        def next_segment() -> None:
            end()
            begin()

        begin()
        try:
            hidden, sites = self._forward(size, next_segment)
        finally:
            if open_:  # a failure mid-capture must not leave the stream capturing
                end()
        self.buckets[size] = _Bucket(segments, sites, hidden)

    @torch.inference_mode()
    def capture(self) -> None:
        """Every bucket, largest first, on a side stream with garbage collection off (see
        DecodeGraphs.capture for why)."""
        gc.collect()
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self._capture_stream():
                for size in reversed(self.sizes):
                    self._capture_bucket(size)
        finally:
            if collecting:
                gc.enable()
        logger.info("captured piecewise CUDA graphs for token counts %s", self.sizes)

    @contextmanager
    def _capture_stream(self) -> Iterator[None]:
        if self.device.type != "cuda":  # a fake graph (tests): nothing to order
            yield
            return
        torch.cuda.synchronize()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()

    def run(
        self,
        input_ids: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        """Hidden states [n, hidden] of a step of n = len(input_ids) tokens (`fits(n)`)."""
        n = input_ids.shape[0]
        size = self.sizes[bisect.bisect_left(self.sizes, n)]
        self.input_ids[:n].copy_(input_ids)
        self.cos[:n].copy_(cos)
        self.sin[:n].copy_(sin)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)  # padding rows write no cache slot
        bucket = self.buckets[size]
        bucket.segments[0].replay()
        for site, segment in zip(bucket.sites, bucket.segments[1:], strict=True):
            site.attend(n, meta)
            segment.replay()
        self.replays += 1
        return bucket.hidden[:n]

    def release(self) -> None:
        """Free the segments, their memory pool and the static buffers (the engine closed);
        `sizes` and `replays` stay, for what reports on a closed engine."""
        self.buckets.clear()
        self._shared.clear()
        self.pool = None
        self.model, self.kv_caches = None, []  # type: ignore[assignment]
        self.input_ids = self.cos = self.sin = self.slot_mapping = None  # type: ignore[assignment]
