"""The mixture-of-experts MLP (Mixtral, Qwen3-MoE): a replicated router, top-k routing, and the
experts' SwiGLU weights stacked in one tensor each, dispatched once to a backend (the Triton
grouped GEMM on CUDA, a loop over the routed experts elsewhere).

Checkpoints store each expert's gate/up/down as its own tensor (Mixtral `experts.{e}.w1/w3/w2`,
Qwen3-MoE `experts.{e}.gate_proj/up_proj/down_proj`); transformers 5 holds them stacked in
memory (`experts.gate_up_proj` [E, 2 * I, H], `experts.down_proj` [E, H, I]). Both load:
`expert_weights_mapping` names each tensor's place for the generic loader.

Under tensor parallelism every rank holds every expert, cut along the intermediate dimension
(its block of gate/up rows and of down columns); the partial outputs are all-reduced once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backends.torch_native.moe import fused_moe_torch, route
from ..distributed.parallel_state import all_reduce, divide, tp_rank, tp_size
from .linear import LinearBase

ExpertShard = tuple[int, int]  # (expert, block of rows): gate 0 and up 1 in w13; 0 in w2


class StackedExpertWeight(nn.Module):
    """One weight per expert stacked as [E, rows, cols]; shard (e, i) fills expert e's i-th
    block of rows, and a stacked checkpoint tensor fills the whole (shard None). `tp_dim`: the
    dimension of one expert's matrix split across ranks (0: rows, 1: columns); sizes given are
    the model's, the parameter is this rank's."""

    def __init__(self, num_experts: int, row_sizes: list[int], cols: int, tp_dim: int) -> None:
        super().__init__()
        self.tp_dim = tp_dim
        if tp_dim == 0:
            row_sizes = [divide(size, "expert intermediate features") for size in row_sizes]
        else:
            cols = divide(cols, "expert intermediate features")
        self.weight = nn.Parameter(torch.empty(num_experts, sum(row_sizes), cols))
        starts = [sum(row_sizes[:i]) for i in range(len(row_sizes))]
        self.shards: dict[ExpertShard, tuple[int, int]] = {
            (e, i): (start, size)
            for e in range(num_experts)
            for i, (start, size) in enumerate(zip(starts, row_sizes, strict=True))
        }

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ExpertShard | None = None
    ) -> None:
        if shard_id is None:
            blocks = len({i for _, i in self.shards})
            # A stacked tensor [E, rows, cols]: this rank's part of each block of rows.
            parts = loaded.chunk(blocks, 1) if self.tp_dim == 0 else [loaded]
            param.data.copy_(torch.cat([self._rank_part(p, self.tp_dim + 1) for p in parts], 1))
            return
        start, size = self.shards[shard_id]
        param.data[shard_id[0], start : start + size].copy_(self._rank_part(loaded, self.tp_dim))

    @staticmethod
    def _rank_part(loaded: torch.Tensor, dim: int) -> torch.Tensor:
        return loaded if tp_size() == 1 else loaded.chunk(tp_size(), dim)[tp_rank()]


class FusedMoE(nn.Module):
    """SwiGLU experts: w13 [E, 2 * I, H] (gate rows, then up rows), w2 [E, H, I]. Each token
    goes to the `top_k` experts its router logits rank first, weighted by their softmax
    (renormalized over the k with `renormalize`)."""

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool,
    ) -> None:
        super().__init__()
        self.top_k, self.renormalize = top_k, renormalize
        self.w13 = StackedExpertWeight(
            num_experts, [intermediate_size, intermediate_size], hidden_size, tp_dim=0
        )
        self.w2 = StackedExpertWeight(num_experts, [hidden_size], intermediate_size, tp_dim=1)

    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        w13, w2 = self.w13.weight, self.w2.weight
        if x.is_cuda:
            from ..backends.cuda.moe import fused_moe_routed  # Triton: imported where it runs

            return all_reduce(
                fused_moe_routed(
                    x.contiguous(), router_logits, w13, w2, self.top_k, self.renormalize
                )
            )
        topk_weights, topk_ids = route(router_logits, self.top_k, self.renormalize)
        return all_reduce(fused_moe_torch(x, w13, w2, topk_weights, topk_ids))


class SparseMoeBlock(nn.Module):
    """The MLP of an MoE layer: the router `gate` (a replicated linear, E logits a token) and
    the `experts`, whose stacked w13 [E, 2 * I, H] gives the router its shape."""

    def __init__(self, experts: FusedMoE) -> None:
        super().__init__()
        num_experts, _, hidden_size = experts.w13.weight.shape
        # gate first: the checkpoint-name order of the state dict stays gate, experts
        self.gate = LinearBase(hidden_size, num_experts, bias=False)
        self.experts = experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x, self.gate(x))


def expert_weights_mapping(
    num_experts: int, module: str, gate: str, up: str, down: str
) -> dict[str, tuple[str, ExpertShard | None]]:
    """Checkpoint name fragment -> (parameter name fragment, shard) of the `SparseMoeBlock`
    a model names `module` in each layer, for its `packed_modules_mapping` (put first: these
    fragments are more specific than a dense MLP's). `gate`, `up`, `down`: the checkpoint's
    names of an expert's projections. transformers 5's stacked tensors live under `mlp.`."""
    mapping: dict[str, tuple[str, ExpertShard | None]] = {
        "mlp.experts.gate_up_proj": (f"{module}.experts.w13.weight", None),
        "mlp.experts.down_proj": (f"{module}.experts.w2.weight", None),
    }
    if module != "mlp":
        mapping["mlp.gate."] = (f"{module}.gate.", None)
    for e in range(num_experts):
        experts = f"{module}.experts.{e}"
        mapping[f"{experts}.{gate}."] = (f"{module}.experts.w13.", (e, 0))
        mapping[f"{experts}.{up}."] = (f"{module}.experts.w13.", (e, 1))
        mapping[f"{experts}.{down}."] = (f"{module}.experts.w2.", (e, 0))
    return mapping
