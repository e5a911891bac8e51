"""The ModelRunner port on PyTorch: flatten a step plan, run the model, sample on the device."""

from __future__ import annotations

import itertools

import torch

from ....application.ports import CacheGeometry, StepOutput
from ....domain.scheduler import StepPlan
from .attention import AttentionMetadata, decode_context
from .cuda_graph import DecodeGraphs
from .grammar_mask import GrammarMask
from .llama import LlamaForCausalLM
from .rotary import rotary_cos_sin
from .sampling import SamplingBatch, sample, top_logprobs


class PytorchModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
        max_batch_size: int = 32,
        max_model_len: int | None = None,
        use_cuda_graphs: bool = False,
    ) -> None:
        cfg = model.config
        self.max_batch_size = max_batch_size
        self.model = model
        self.device = device
        self.dtype = dtype
        self._cache = CacheGeometry(num_blocks=num_blocks, block_size=block_size)
        shape = (num_blocks, block_size, cfg.num_key_value_heads, cfg.head_dim)
        self.kv_caches = [
            (
                torch.zeros(shape, dtype=dtype, device=device),
                torch.zeros(shape, dtype=dtype, device=device),
            )
            for _ in range(cfg.num_hidden_layers)
        ]
        self.cos, self.sin = rotary_cos_sin(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, device
        )
        self.graphs: DecodeGraphs | None = None
        if use_cuda_graphs and device.type == "cuda":
            max_len = max_model_len or cfg.max_position_embeddings
            self.graphs = DecodeGraphs(
                model, self.kv_caches, self.cos, self.sin, max_batch_size, -(-max_len // block_size)
            )
            self.graphs.capture()

    @property
    def cache(self) -> CacheGeometry:
        return self._cache

    def _prepare(self, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        block_size = self._cache.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, context_lens, cached = [], [], []
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            start, end = seq.num_cached_tokens, seq.num_cached_tokens + num
            input_ids.extend(seq.token_ids[start:end])
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
        if self.device.type == "cuda":
            meta.cu_seqlens_q = tensor(list(itertools.accumulate(query_lens, initial=0)))
            meta.max_query_len = max(query_lens)
        else:
            self._add_decode_context(meta, tensor)
        return tensor(input_ids), tensor(positions), meta

    def _add_decode_context(self, meta: AttentionMetadata, tensor) -> None:
        """Batch the one-token sequences' attention, in decode and in mixed steps alike."""
        single = [i for i, n in enumerate(meta.query_lens) if n == 1]
        if not single:
            return
        tables, lens = meta.block_tables, meta.context_lens
        if not meta.is_decode:
            rows = tensor(single)
            tables, lens = tables[rows], lens[rows]
            starts = list(itertools.accumulate(meta.query_lens, initial=0))
            meta.decode_rows = tensor([starts[i] for i in single])
        max_len = max(meta.context_lens_list[i] for i in single)
        meta.context_slots, meta.context_mask = decode_context(
            tables, lens, max_len, self._cache.block_size
        )

    @torch.inference_mode()
    def step(self, plan: StepPlan) -> StepOutput:
        input_ids, positions, meta = self._prepare(plan)
        graphs = self.graphs
        if (
            graphs is not None
            and meta.is_decode
            and graphs.can_run(len(plan.seqs), meta.block_tables.shape[1])
        ):
            logits = graphs.run(input_ids, positions, meta)
        else:
            hidden = self.model(
                input_ids, self.cos[positions], self.sin[positions], self.kv_caches, meta
            )
            last = torch.tensor(meta.query_lens, device=self.device).cumsum(0) - 1
            logits = self.model.compute_logits(hidden[last])
        batch = SamplingBatch.from_seqs(plan.seqs, self.device)
        grammar = GrammarMask.from_plan(plan)
        token_ids = sample(logits, batch, grammar.apply if grammar else None)
        ids = token_ids.tolist()
        if grammar is not None:
            grammar.accept(ids)
        want = [s.sampling.logprobs for s in plan.seqs]
        if all(w is None for w in want):
            return StepOutput(token_ids=ids)
        return StepOutput(token_ids=ids, logprobs=self._logprobs(logits, token_ids, want))

    @staticmethod
    def _logprobs(logits: torch.Tensor, token_ids: torch.Tensor, want: list[int | None]) -> list:
        k = max(w or 0 for w in want)
        chosen, ids, values = top_logprobs(logits, token_ids, k)
        chosen, ids, values, tokens = (
            chosen.tolist(),
            ids.tolist(),
            values.tolist(),
            token_ids.tolist(),
        )
        out = []
        for row, n in enumerate(want):
            if n is None:
                out.append(None)
                continue
            entry = {tokens[row]: chosen[row]}
            entry.update(zip(ids[row][:n], values[row][:n], strict=True))
            out.append(entry)
        return out
