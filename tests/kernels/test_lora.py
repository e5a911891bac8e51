"""The LoRA shrink/expand kernels against the row-by-row reference: mixed adapters, base rows,
packed shards (q/k/v) in one expand, the shrink split over the input, mixed ranks padded as the
pool pads them, irregular sizes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import lmdeploy.kernels.lora as lora_kernels
from lmdeploy.kernels.lora import (
    lora_expand,
    lora_num_splits,
    lora_ref,
    lora_segments,
    lora_shrink,
)

from ._util import DEVICE, DTYPES

# (tokens, in, shard sizes, rank, slots, input splits: None the default): segments longer
# than a row tile (16), input slices of uneven width, more slices asked than fit
CASES = [(5, 72, [72], 8, 3, None), (9, 100, [40, 24, 24], 16, 2, 3), (3, 33, [50, 50], 5, 4, 1)]
CASES += [(41, 130, [70, 20, 20], 24, 2, None), (6, 300, [40, 24, 24], 8, 3, 4)]
CASES += [(4, 40, [30], 8, 1, 8)]


def segments_of(slots: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, ...]:
    parts = lora_segments(slots.tolist(), num_slots)
    return tuple(torch.tensor(p, dtype=torch.int32, device=DEVICE) for p in parts)


def _delta(x, lora_a, lora_b, slots, scales, sizes, num_splits=None):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out = torch.zeros(x.shape[0], sum(sizes), dtype=x.dtype, device=DEVICE)
    segments = segments_of(slots, lora_a.shape[0])
    part = lora_shrink(x, lora_a, *segments, num_splits=num_splits)
    lora_expand(part, lora_b, *segments, scales, out, sizes)
    return out, list(zip(starts, sizes, strict=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    num_tokens, in_size, sizes, rank, num_slots, num_splits = case
    torch.manual_seed(0)
    x = torch.randn(num_tokens, in_size, dtype=dtype, device=DEVICE)
    # scaled so that deltas are O(1), where half-precision tolerances mean something
    lora_a = torch.randn(num_slots, len(sizes) * rank, in_size, device=DEVICE) * in_size**-0.5
    lora_b = torch.randn(num_slots, sum(sizes), rank, device=DEVICE) * rank**-0.5
    lora_a, lora_b = lora_a.to(dtype), lora_b.to(dtype)
    scales = torch.rand(num_slots, device=DEVICE) + 0.5
    # every slot, base rows (-1) between them, and past row 20 a long run of slot 0
    slots = torch.tensor(
        [0 if t >= 20 else (t % (num_slots + 1)) - 1 for t in range(num_tokens)],
        dtype=torch.int32,
        device=DEVICE,
    )
    out, shards = _delta(x, lora_a, lora_b, slots, scales, sizes, num_splits)
    ref = lora_ref(x, lora_a, lora_b, slots, scales, shards).to(dtype)
    # half types: x @ A^T is rounded to the weights' dtype before the second matmul
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(out, ref, **tol)
    assert not out[slots < 0].any(), "a base-model row got a LoRA delta"


def test_expand_adds_into_existing_output():
    torch.manual_seed(1)
    x = torch.randn(4, 20, device=DEVICE)
    lora_a = torch.randn(1, 8, 20, device=DEVICE)
    lora_b = torch.randn(1, 30, 8, device=DEVICE)
    slots = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    scales = torch.tensor([2.0], device=DEVICE)
    base = torch.randn(4, 30, device=DEVICE)
    out = base.clone()
    segments = segments_of(slots, 1)
    lora_expand(lora_shrink(x, lora_a, *segments), lora_b, *segments, scales, out, [30])
    expected = base + lora_ref(x, lora_a, lora_b, slots, scales, [(0, 30)])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_mixed_ranks_padded_packed_and_split():
    """Adapters of rank 8, 16 and 64 in one batch, padded to 64 as the pool pads them, on a
    packed q/k/v output, with base rows between, the input split in slices."""
    torch.manual_seed(3)
    ranks, in_size, sizes, pad = [8, 16, 64], 96, [40, 24, 24], 64
    lora_a = torch.zeros(len(ranks), 3 * pad, in_size, device=DEVICE)
    lora_b = torch.zeros(len(ranks), sum(sizes), pad, device=DEVICE)
    for slot, rank in enumerate(ranks):
        for shard in range(3):
            lora_a[slot, shard * pad : shard * pad + rank].normal_(std=in_size**-0.5)
        lora_b[slot, :, :rank].normal_(std=rank**-0.5)
    slots = torch.tensor([2, -1, 0, 1, 1, -1, 2, 0, 2], dtype=torch.int32, device=DEVICE)
    scales = torch.tensor([2.0, 0.5, 0.125], device=DEVICE)
    x = torch.randn(len(slots), in_size, device=DEVICE)
    out, shards = _delta(x, lora_a, lora_b, slots, scales, sizes, num_splits=3)
    assert not out[slots < 0].any(), "a base-model row got a LoRA delta"
    for slot, rank in enumerate(ranks):  # each adapter at its own rank, unpadded
        rows = slots == slot
        a = torch.cat([lora_a[slot, i * pad : i * pad + rank] for i in range(3)])
        b = lora_b[slot, :, :rank]
        one = torch.zeros(int(rows.sum()), dtype=torch.int32, device=DEVICE)
        ref = lora_ref(x[rows], a[None], b[None], one, scales[slot : slot + 1], shards)
        torch.testing.assert_close(out[rows], ref, atol=1e-4, rtol=1e-4)


def test_decode_steps_split_the_input_prefill_steps_do_not():
    # Llama-3-8B's hidden size: 64 decode rows over 8 adapters fill the GPU by splitting
    assert lora_num_splits(64, 8, 4096) == 8
    assert lora_num_splits(1, 8, 4096) == 8
    assert lora_num_splits(4096, 8, 4096) == 1  # 256 row tiles already
    assert lora_num_splits(64, 8, 100) == 1  # too narrow to split


def test_the_layers_triton_and_grouped_paths_agree():
    """LoraStack's CUDA path (these kernels) and its CPU path (grouped by adapter) add the
    same delta to a packed q/k/v output, with graph rows padded by base rows."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda.lora import GraphSegments
    from lmdeploy.adapters.engines.pytorch.layers.lora import LoraBatch, LoraStack

    torch.manual_seed(2)
    shards, rank, in_size, num_slots = [(0, 40), (40, 24), (64, 24)], 8, 36, 3
    batch = LoraBatch(num_slots, torch.tensor([0.5, 2.0, 1.0], device=DEVICE))
    stack = LoraStack(batch, shards, rank, in_size, num_slots, DEVICE, torch.float32)
    stack.lora_a.normal_()
    stack.lora_b.normal_()
    x, base = torch.randn(6, in_size, device=DEVICE), torch.randn(6, 88, device=DEVICE)
    rows = [2, -1, 0, 2, 1, -1]
    batch.set_rows(rows, torch.device("cpu"))  # groups by adapter, as on a CPU
    batch.groups = [(slot, index.to(DEVICE)) for slot, index in batch.groups]
    grouped = base.clone()
    stack._add_grouped(x, grouped)
    batch.graph_rows = GraphSegments(num_slots, 8, DEVICE)
    batch.use_graph_rows(6)
    batch.load_graph_rows(rows)
    triton_out = base.clone()
    stack._add_triton(x, triton_out)
    torch.testing.assert_close(triton_out, grouped, atol=1e-4, rtol=1e-4)
    assert torch.equal(grouped[1], base[1]) and not torch.equal(grouped[0], base[0])


class _TorchOps(TorchDispatchMode):
    """Records the torch ops run outside the kernels (the interpreter's own are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.in_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_kernel:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _Counted:
    """A kernel whose launches are counted (and still run)."""

    def __init__(self, kernel, mode: _TorchOps, launches: list[str]) -> None:
        self.kernel, self.mode, self.launches = kernel, mode, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append(self.kernel.fn.__name__)
            self.mode.in_kernel = True
            try:
                self.kernel[grid](*args, **kwargs)
            finally:
                self.mode.in_kernel = False

        return launch


def test_a_packed_linear_is_two_launches_and_no_torch_op(monkeypatch):
    """What a decode graph replays per adapted q/k/v linear: the shrink and one expand for all
    three shards, no zero-fill, copy or slice between them (an allocation is no kernel)."""
    from lmdeploy.adapters.engines.pytorch.backends.cuda.lora import (
        add_lora,
        pack_segments,
        split_segments,
    )

    torch.manual_seed(4)
    x, out = torch.randn(6, 36, device=DEVICE), torch.randn(6, 88, device=DEVICE)
    lora_a, lora_b = torch.randn(3, 24, 36, device=DEVICE), torch.randn(3, 88, 8, device=DEVICE)
    scales = torch.ones(3, device=DEVICE)
    packed = pack_segments([2, -1, 0, 2, 1, -1], 3, 6).to(DEVICE)
    segments = split_segments(packed, 3, 6)
    mode, launches = _TorchOps(), []
    for name in ("_lora_shrink_kernel", "_lora_expand_kernel"):
        kernel = getattr(lora_kernels, name)
        monkeypatch.setattr(lora_kernels, name, _Counted(kernel, mode, launches))
    with mode:
        add_lora(x, out, lora_a, lora_b, segments, scales, [40, 24, 24])
    assert launches == ["_lora_shrink_kernel", "_lora_expand_kernel"]
    assert set(mode.ops) <= {"aten.empty.memory_format"}, mode.ops
