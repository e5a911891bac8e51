"""The LoRA adapter pool: every adapter's weights in host memory, a bounded number of them
resident in device slots, swapped in when a step needs one (least recently used out first;
an adapter the current step uses is never evicted).

At start-up each adapter's tensors are checked against the model's linears (a shape mismatch
names the tensor) and padded to the largest rank, so any adapter fits any slot.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from .....domain.scheduler import StepPlan
from .....domain.sequence import Sequence
from ....loaders.peft_adapter import LoraWeights, PeftAdapter
from ..layers.linear import LinearBase
from ..layers.lora import LoraBatch, LoraStack
from ..models.base import CausalLM

# Per adapter: each adapted linear's padded (A [shards * rank, in], B [out, rank]) on the host.
_HostWeights = dict[str, tuple[torch.Tensor, torch.Tensor]]


class AdapterPool:
    def __init__(
        self,
        model: CausalLM,
        adapters: list[PeftAdapter],
        num_slots: int,
        device: torch.device,
        dtype: torch.dtype,
        max_graph_rows: int = 0,
    ) -> None:
        """`max_graph_rows`: the largest decode batch a CUDA graph replays (0: no graphs)."""
        self.num_slots = num_slots
        self.device = device
        self.rank = max(a.rank for a in adapters)
        self.batch = LoraBatch(num_slots, torch.zeros(num_slots, device=device))
        if max_graph_rows:  # decode graphs run on CUDA only
            from ..backends.cuda.lora import GraphSegments  # Triton: imported where it runs

            self.batch.graph_rows = GraphSegments(num_slots, max_graph_rows, device)
        self._scaling = {a.name: a.scaling for a in adapters}
        self._host: dict[str, _HostWeights] = {}
        self.stacks: dict[str, LoraStack] = {}
        for adapter in adapters:
            self._host[adapter.name] = self._pad(model, adapter, dtype)
        for name in sorted({m for host in self._host.values() for m in host}):
            self._add_stack(model, name, dtype)
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> slot, LRU first
        self.swap_ins = 0

    @property
    def names(self) -> list[str]:
        return list(self._host)

    # -- loading ---------------------------------------------------------------------------
    def _pad(self, model: CausalLM, adapter: PeftAdapter, dtype: torch.dtype) -> _HostWeights:
        """The adapter's weights per adapted linear, shards side by side, ranks padded."""
        host: _HostWeights = {}
        pin = self.device.type == "cuda"
        for module_name, weights in adapter.modules.items():
            linear_name, shard = _resolve(model, module_name)
            linear = model.get_submodule(linear_name)
            shards = _shards(linear)
            if linear_name not in host:
                a = torch.zeros(len(shards) * self.rank, linear.input_size, dtype=dtype)
                b = torch.zeros(linear.output_size, self.rank, dtype=dtype)
                host[linear_name] = (a.pin_memory(), b.pin_memory()) if pin else (a, b)
            if shard not in shards:  # e.g. Phi-3's qkv_proj, saved packed in the checkpoint
                raise ValueError(
                    f"adapter {adapter.name!r}: {module_name} adapts a packed weight whole; "
                    "LoRA is supported on separate q/k/v and gate/up projections only"
                )
            index = list(shards).index(shard)
            start, size = shards[shard]
            _check_shapes(adapter, module_name, weights, linear.input_size, size)
            a, b = host[linear_name]
            a[index * self.rank : index * self.rank + adapter.rank].copy_(weights.lora_a)
            b[start : start + size, : adapter.rank].copy_(weights.lora_b)
        return host

    def _add_stack(self, model: CausalLM, linear_name: str, dtype: torch.dtype) -> None:
        linear = model.get_submodule(linear_name)
        stack = LoraStack(
            self.batch,
            list(_shards(linear).values()),
            self.rank,
            linear.input_size,
            self.num_slots,
            self.device,
            dtype,
        )
        linear.register_forward_hook(stack.hook)
        self.stacks[linear_name] = stack

    # -- per step --------------------------------------------------------------------------
    def prepare(self, plan: StepPlan) -> None:
        """Make the step's adapters resident and tell every hook each token row's slot."""
        if all(seq.adapter_name is None for seq in plan.seqs):
            self.batch.active = False
            return
        slot_of = self._acquire_all(plan.seqs)
        rows: list[int] = []
        for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
            rows += [slot_of.get(seq.adapter_name, -1)] * num
        self.batch.set_rows(rows, self.device)

    def prepare_graph(self, seqs: list[Sequence]) -> None:
        """The same for a decode graph's replay: one row per sequence, in the graph's rows."""
        slot_of = self._acquire_all(seqs)
        self.batch.load_graph_rows([slot_of.get(seq.adapter_name, -1) for seq in seqs])

    def _acquire_all(self, seqs: list[Sequence]) -> dict[str | None, int]:
        names = {seq.adapter_name for seq in seqs} - {None}
        return {name: self._acquire(name, names) for name in names}

    def _acquire(self, name: str, in_step: set[str]) -> int:
        if name not in self._host:
            raise KeyError(f"LoRA adapter {name!r} is not loaded; known: {self.names}")
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name]
        if len(self._resident) < self.num_slots:
            slot = len(self._resident)
        else:
            victim = next((n for n in self._resident if n not in in_step), None)
            if victim is None:
                raise RuntimeError(
                    f"a step uses more LoRA adapters than the {self.num_slots} pool slots; "
                    "the scheduler should have held requests back (raise max_loras)"
                )
            slot = self._resident.pop(victim)
        self._load(name, slot)
        self._resident[name] = slot
        return slot

    def _load(self, name: str, slot: int) -> None:
        host = self._host[name]
        for linear_name, stack in self.stacks.items():
            if linear_name in host:
                a, b = host[linear_name]
                stack.lora_a[slot].copy_(a, non_blocking=True)
                stack.lora_b[slot].copy_(b, non_blocking=True)
            else:  # the adapter leaves this linear alone
                stack.lora_a[slot].zero_()
                stack.lora_b[slot].zero_()
        self.batch.scales[slot] = self._scaling[name]
        self.swap_ins += 1


def _resolve(model: CausalLM, module_name: str) -> tuple[str, str | int | None]:
    """A checkpoint module name -> (our linear's name, its shard id; None: the whole)."""
    parent, _, leaf = module_name.rpartition(".")
    packed, shard = model.packed_modules_mapping.get(leaf, (leaf, None))
    linear_name = f"{parent}.{packed}" if parent else packed
    try:
        linear = model.get_submodule(linear_name)
    except AttributeError:
        linear = None
    if not isinstance(linear, LinearBase):
        raise ValueError(
            f"LoRA target {module_name!r} is not a linear of this model; adapt q/k/v/o/gate/"
            "up/down projections only"
        )
    return linear_name, shard


def _shards(linear: LinearBase) -> dict[str | int | None, tuple[int, int]]:
    return dict(linear.shards) if linear.shards else {None: (0, linear.output_size)}


def _check_shapes(
    adapter: PeftAdapter, module: str, weights: LoraWeights, in_size: int, out_size: int
) -> None:
    rank = adapter.rank
    for half, tensor, expected in (
        ("lora_A", weights.lora_a, (rank, in_size)),
        ("lora_B", weights.lora_b, (out_size, rank)),
    ):
        if tuple(tensor.shape) != expected:
            raise ValueError(
                f"adapter {adapter.name!r}: {module}.{half}.weight has shape {tuple(tensor.shape)}, "
                f"the base model needs {expected}; was it trained on another base model?"
            )
