"""The ModelRunner port on PyTorch: flatten a step plan, run the model, sample on the device."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from .....application.ports import CacheGeometry, StepOutput
from .....domain.scheduler import StepPlan
from .....domain.sequence import Sequence
from ..backends.attention_metadata import AttentionMetadata
from ..distributed.parallel_state import local_kv_heads
from ..distributed.step_channel import ModelBroadcaster
from ..distributed.workers import WatchedWorkers, leave_group
from ..layers.attention import prepare_metadata
from ..layers.rotary import RotaryTables
from ..models.base import CausalLM
from ..sampling.batch import SamplingBatch
from ..sampling.grammar_mask import GrammarMask
from ..sampling.logits_processing import LogitsProcessorHook, wants_processors
from ..sampling.sampler import sample, top_logprobs
from .cache_swap import CacheSwapper
from .cpu_decode_step import CpuDecodeStep
from .cuda_graph import DecodeGraphs
from .decode_ahead import AheadCounters, AheadStep, HostTokens, is_plain
from .host_memory import release_freed_heap
from .image_rows import gather_image_rows, touches_images
from .kv_cache import allocate_kv_caches
from .lora_pool import AdapterPool
from .mrope import has_grids, mrope_positions
from .piecewise_graph import MAX_TOKENS as PIECEWISE_MAX_TOKENS
from .piecewise_graph import PiecewiseGraphs, enabled
from .step_extras import collect_extras, wants_extras


class PytorchModelRunner:
    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        use_cuda_graphs: bool = False,
        num_cpu_blocks: int = 0,
        peers: ModelBroadcaster | None = None,
        workers: WatchedWorkers | None = None,
        quant_policy: int = 0,
        lora: AdapterPool | None = None,
        cpu_fused_decode: bool = False,
        cpu_repack: bool = True,
        max_step_tokens: int | None = None,
    ) -> None:
        """`peers`: on rank 0 of a tensor-parallel group, `model` wrapped so that each call
        reaches the other ranks first (distributed/step_channel.py); `workers`: the other
        ranks' processes, watched. `quant_policy` 8 or 4 stores the KV cache as int8 / int4
        (runner/kv_cache.py). `cpu_fused_decode`: one sequence's decode steps run the decoder
        layers in one C call where the model fits it (runner/cpu_decode_step.py), reading Q4
        weights from a repacked copy with `cpu_repack`. `max_step_tokens`: the most tokens a
        step carries (the scheduler's budget plus one decode a sequence), which bounds the
        piecewise graphs' largest bucket (runner/piecewise_graph.py; None: none are captured)."""
        cfg = model.config
        self.lora = lora
        self.max_batch_size = max_batch_size
        self.model: CausalLM = peers if peers is not None else model  # type: ignore[assignment]
        self.peers, self.workers = peers, workers
        self.device = device
        self.dtype = dtype
        self._cache = CacheGeometry(num_blocks, block_size, num_cpu_blocks)
        self.kv_caches = allocate_kv_caches(
            cfg.num_hidden_layers,
            num_blocks,
            block_size,
            local_kv_heads(cfg.num_attention_heads, cfg.num_key_value_heads),
            cfg.head_dim,
            dtype,
            device,
            quant_policy,
        )
        self.swapper = CacheSwapper(self.kv_caches, num_cpu_blocks) if num_cpu_blocks else None
        # Positions and block-table columns past the cache are never used (no sequence outgrows
        # it): a session_len beyond the cache costs no memory, and one of 2**40 tokens no crash.
        max_len = min(max_model_len or cfg.max_position_embeddings, num_blocks * block_size)
        self.rope = RotaryTables(
            cfg.head_dim,
            max(max_len, cfg.max_position_embeddings),
            cfg.rope_theta,
            cfg.rope_scaling,
            cfg.max_position_embeddings,
            device,
            cfg.mrope_section,
        )
        self.cpu_step = (
            CpuDecodeStep(model, self.kv_caches, cpu_repack) if cpu_fused_decode else None
        )
        self.graphs: DecodeGraphs | None = None
        if use_cuda_graphs:  # the builder asked the platform whether it can
            max_blocks = -(-max_len // block_size)
            if peers is not None:  # every rank captures, in the same order: collectives pair up
                peers.capture(max_batch_size, max_blocks)
            self.graphs = self.capture_graphs(max_batch_size, max_blocks)
        self.piecewise: PiecewiseGraphs | None = None
        if (
            use_cuda_graphs
            and max_step_tokens
            and enabled(device, peers is not None, lora is not None)
        ):
            self.piecewise = self.capture_piecewise(min(max_step_tokens, PIECEWISE_MAX_TOKENS))
        # Start each forecast decode step before the current step's tokens reach the host
        # (decode_ahead.py): on by default where it overlaps anything, i.e. under CUDA graphs;
        # LMDEPLOY_DECODE_AHEAD=0/1 forces it (A/B runs, tests of the path on the CPU).
        forced = os.environ.get("LMDEPLOY_DECODE_AHEAD")
        self.decodes_ahead = self.graphs is not None if forced is None else forced == "1"
        self._ahead: AheadStep | None = None
        self.ahead_counters = AheadCounters()

    def capture_graphs(self, max_batch_size: int, max_blocks: int) -> DecodeGraphs:
        """The decode graphs of this rank's model (its raw model: a tensor-parallel rank 0
        sends each replay's inputs to the other ranks instead of each call)."""
        graphs = DecodeGraphs(
            self.peers.inner if self.peers is not None else self.model,
            self.kv_caches,
            self.rope.cos,
            self.rope.sin,
            max_batch_size,
            max_blocks,
            self._cache.block_size,
            before_replay=self.peers.replay if self.peers is not None else None,
            lora=self.lora,
        )
        graphs.capture()
        return graphs

    def capture_piecewise(self, max_tokens: int) -> PiecewiseGraphs:
        """The piecewise graphs of the steps that carry prompt tokens, up to `max_tokens`."""
        rope = self.rope
        pieces = PiecewiseGraphs(
            self.model, self.kv_caches, rope.cos.shape[1], rope.cos.dtype, max_tokens, self.device
        )
        pieces.capture()
        return pieces

    @property
    def cache(self) -> CacheGeometry:
        return self._cache

    def _prepare(
        self, plan: StepPlan, lag: int = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor, AttentionMetadata]:
        """The step's flat inputs; with `lag` 1 (a decode step started ahead) each sequence
        computes the position after its last known token, and the input ids are left to the
        caller (None). The rotary positions are [tokens], or [3, tokens] for an M-RoPE model
        in a step with a sequence whose images have grids."""
        block_size = self._cache.block_size
        mrope = self.rope.mrope_section is not None and any(has_grids(s.images) for s in plan.seqs)
        input_ids: list[int] = []
        positions: list[int] = []
        positions_3d: list[np.ndarray] = []
        slots: list[int] = []
        query_lens, context_lens, cached = [], [], []
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            start = seq.num_cached_tokens + lag
            end = start + num
            input_ids.extend(seq.token_ids[start:end])
            if mrope:
                positions_3d.append(mrope_positions(seq.images, start, end))
            else:
                positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(
                table[p // block_size] * block_size + p % block_size for p in range(start, end)
            )
            query_lens.append(end - start)
            context_lens.append(end)
            cached.append(start)
        max_blocks = max(len(seq.block_table) for seq in plan.seqs)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in plan.seqs]

        def tensor(values):
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        meta = AttentionMetadata(
            slot_mapping=tensor(slots),
            block_tables=tensor(tables),
            context_lens=tensor(context_lens),
            query_lens=query_lens,
            context_lens_list=context_lens,
            is_decode=all(q == 1 for q in query_lens),
            num_cached_list=cached,
        )
        prepare_metadata(meta, block_size)
        rotary = (
            torch.from_numpy(np.concatenate(positions_3d, axis=1)).to(self.device)
            if mrope
            else tensor(positions)
        )
        return (tensor(input_ids) if not lag else None), rotary, meta

    def _cos_sin(
        self, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rope = self.rope
        if positions.dim() == 2:
            return rope.mrope(positions)
        if rope.needs_lengths(meta.context_lens_list, meta.is_decode):
            query_lens = torch.tensor(meta.query_lens, device=self.device)
            return rope.at(positions, meta.context_lens.repeat_interleave(query_lens))
        return rope.cos[positions], rope.sin[positions]

    def _decode_logits_ahead(
        self, seqs: list[Sequence], tokens: torch.Tensor, rows: list[int]
    ) -> torch.Tensor:
        """Logits of the decode step after the current one for `seqs`, whose new input ids
        are `tokens[rows]` on the device (the current step's samples, not yet on the host)."""
        graphs = self.graphs
        if graphs is not None and graphs.can_run(seqs, lag=1):
            return graphs.run(seqs, lag=1, ids_from=(tokens, rows))
        plan = StepPlan(seqs=seqs, num_scheduled=[1] * len(seqs))
        _, positions, meta = self._prepare(plan, 1)
        if self.lora is not None:  # the graphs' run does it for their replay
            self.lora.prepare(plan)
        input_ids = tokens[torch.tensor(rows, device=tokens.device)]
        cos, sin = self._cos_sin(positions, meta)
        hidden = self.model(input_ids, cos, sin, self.kv_caches, meta)
        return self.model.compute_logits(hidden)

    def _start_ahead(
        self, seqs: list[Sequence], tokens: torch.Tensor, rows_of: dict[int, int]
    ) -> None:
        """Queue the forecast step of `seqs` behind the current one (see decode_ahead.py)."""
        rows = [rows_of[seq.seq_id] for seq in seqs]
        logits = self._decode_logits_ahead(seqs, tokens, rows)
        sampled = sample(logits, SamplingBatch.from_seqs(seqs, self.device, lag=1))
        block_size = self._cache.block_size
        self.ahead_counters.started += 1
        self._ahead = AheadStep(
            rows={seq.seq_id: row for row, seq in enumerate(seqs)},
            slots=[AheadStep.slot_of(seq, 1, block_size) for seq in seqs],
            tokens=sampled,
            host=HostTokens(sampled),
        )

    def _forward(self, plan: StepPlan) -> tuple[torch.Tensor, list | None]:
        """Logits [num_seqs, vocab] of the step's last tokens, and the per-sequence rows asked
        for by output_logits / output_last_hidden_state / get_ppl (None when none asks): a graph
        replay for a decode step (inputs staged in one copy), piecewise graphs around eager
        attention for other steps where captured, else the eager model."""
        graphs, extras_wanted = self.graphs, wants_extras(plan)
        # A one-token prefill chunk at an image position looks like a decode step; it runs
        # eagerly, as graphs embed token ids only.
        if graphs is not None and not extras_wanted and all(n == 1 for n in plan.num_scheduled):
            if graphs.can_run(plan.seqs) and not touches_images(plan):
                return graphs.run(plan.seqs), None
        input_ids, positions, meta = self._prepare(plan)
        cos, sin = self._cos_sin(positions, meta)
        if self.lora is not None:
            self.lora.prepare(plan)
        image_rows = gather_image_rows(plan, self.device)
        pieces = self.piecewise
        if image_rows is not None:
            hidden = self.model(input_ids, cos, sin, self.kv_caches, meta, image_rows)
        elif pieces is not None and not extras_wanted and pieces.fits(len(input_ids)):
            hidden = pieces.run(input_ids, cos, sin, meta)
        else:
            hidden = self.cpu_step.run(input_ids, cos, sin, meta) if self.cpu_step else None
            if hidden is None:
                hidden = self.model(input_ids, cos, sin, self.kv_caches, meta)
        if meta.cu_seqlens_q is not None:
            last = meta.cu_seqlens_q[1:] - 1
        else:
            last = torch.tensor(meta.query_lens, device=self.device).cumsum(0) - 1
        logits = self.model.compute_logits(hidden[last])
        return logits, collect_extras(self.model, hidden, plan) if extras_wanted else None

    def step(self, plan: StepPlan) -> StepOutput:
        if self.workers is None:
            return self._step(plan)
        self.workers.check()
        try:
            return self._step(plan)
        except Exception:
            self.workers.check(wait_s=2.0)  # a dead rank, rather than this step, is the cause
            raise

    def idle(self) -> None:
        """The engine ran out of work: return the heap that its steps freed (host_memory.py)."""
        release_freed_heap()

    def on_failure(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` once another tensor-parallel rank dies (never at tp=1)."""
        if self.workers is not None:
            self.workers.on_failure(listener)

    def close(self) -> None:
        """Stop the other tensor-parallel ranks and leave their group (tp > 1), then let go of
        this rank's weights, KV cache and graphs, so that an engine built next in this process
        sizes its cache from the whole device even while the closed pipeline is still
        referenced. What reports on the run stays: `ahead_counters`, the graphs' sizes and
        replays."""
        if self.workers is not None:
            self._stop_workers()
        self._release()

    def _stop_workers(self) -> None:
        assert self.workers is not None
        orderly = self.workers.failure is None
        if orderly and self.peers is not None:
            self.peers.stop()  # the workers release their graphs and leave the group now
        self.graphs, self._ahead = None, None  # captured all-reduces block NCCL's teardown
        leave_group(orderly)  # beside the workers, before waiting for them to exit
        self.workers.close()
        self.workers = None

    def _release(self) -> None:
        self._ahead = None
        for graphs in (self.graphs, self.piecewise):
            if graphs is not None:
                graphs.release()
        self.model, self.peers = None, None  # type: ignore[assignment]
        self.kv_caches = []
        self.swapper, self.cpu_step, self.lora = None, None, None

    @torch.inference_mode()
    def _step(self, plan: StepPlan) -> StepOutput:
        ahead, self._ahead = self._ahead, None
        if self.swapper is not None:  # before the forward pass, which may reuse swapped blocks
            if self.peers is not None:
                self.peers.swap(plan.blocks_to_swap_out, plan.blocks_to_swap_in)
            self.swapper.apply(plan.blocks_to_swap_out, plan.blocks_to_swap_in)
        if not plan.seqs:
            return StepOutput(token_ids=[])
        rows = ahead.rows_for(plan, self._cache.block_size) if ahead is not None else None
        if rows is not None:  # this step already runs: start the next, then wait for this one
            self.ahead_counters.used += 1
            if self._can_start_ahead(plan):
                self._start_ahead(plan.forecast, ahead.tokens, ahead.rows)
            ids = ahead.host.wait()
            return StepOutput(token_ids=[ids[row] for row in rows])
        logits, extras = self._forward(plan)
        batch = SamplingBatch.from_seqs(plan.seqs, self.device)
        hook = LogitsProcessorHook(plan) if wants_processors(plan) else None
        grammar = GrammarMask.from_plan(plan)
        token_ids = sample(logits, batch, hook, grammar.apply if grammar else None)
        if self._can_start_ahead(plan):
            host = HostTokens(token_ids)  # queued before the next step, so it need not wait
            self._start_ahead(
                plan.forecast, token_ids, {s.seq_id: i for i, s in enumerate(plan.seqs)}
            )
            return StepOutput(token_ids=host.wait())
        ids = token_ids.tolist()
        if grammar is not None:
            grammar.accept(ids)
        output = StepOutput(
            token_ids=ids, extras=extras, errors=hook.errors if hook is not None else None
        )
        want = [s.sampling.logprobs for s in plan.seqs]
        if any(w is not None for w in want):
            output.logprobs = self._logprobs(logits, token_ids, ids, want)
        return output

    def _can_start_ahead(self, plan: StepPlan) -> bool:
        """A forecast to start, and nothing in this step that reads its own outputs on the
        host before the next step may overwrite them (logits, grammar state, ...)."""
        return bool(plan.forecast) and self.decodes_ahead and all(is_plain(s) for s in plan.seqs)

    @staticmethod
    def _logprobs(
        logits: torch.Tensor, token_ids: torch.Tensor, tokens: list[int], want: list[int | None]
    ) -> list:
        k = max(w or 0 for w in want)
        chosen, ids, values = top_logprobs(logits, token_ids, k)
        chosen, ids, values = chosen.tolist(), ids.tolist(), values.tolist()
        out = []
        for row, n in enumerate(want):
            if n is None:
                out.append(None)
                continue
            entry = {tokens[row]: chosen[row]}
            entry.update(zip(ids[row][:n], values[row][:n], strict=True))
            out.append(entry)
        return out
