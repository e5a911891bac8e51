"""The LoRA shrink/expand kernels against the row-by-row reference: mixed adapters, base rows,
packed shards (q/k/v), irregular sizes."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.lora import lora_expand, lora_ref, lora_segments, lora_shrink

from ._util import DEVICE, DTYPES

# (tokens, in, shard sizes, rank, slots): segments longer than a row tile (16) too
CASES = [(5, 72, [72], 8, 3), (9, 100, [40, 24, 24], 16, 2), (3, 33, [50, 50], 5, 4)]
CASES += [(41, 130, [70, 20, 20], 24, 2)]


def segments_of(slots: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, ...]:
    parts = lora_segments(slots.tolist(), num_slots)
    return tuple(torch.tensor(p, dtype=torch.int32, device=DEVICE) for p in parts)


def _delta(x, lora_a, lora_b, slots, scales, sizes):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    out = torch.zeros(x.shape[0], sum(sizes), dtype=x.dtype, device=DEVICE)
    segments = segments_of(slots, lora_a.shape[0])
    xa = lora_shrink(x, lora_a, *segments)
    rank = lora_b.shape[2]
    for s, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        lora_expand(xa, lora_b, *segments, scales, out, start, size, s * rank)
    return out, list(zip(starts, sizes, strict=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    num_tokens, in_size, sizes, rank, num_slots = case
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
    out, shards = _delta(x, lora_a, lora_b, slots, scales, sizes)
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
    lora_expand(lora_shrink(x, lora_a, *segments), lora_b, *segments, scales, out, 0, 30, 0)
    expected = base + lora_ref(x, lora_a, lora_b, slots, scales, [(0, 30)])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_the_layers_triton_and_grouped_paths_agree():
    """LoraStack's CUDA path (these kernels) and its CPU path (grouped by adapter) add the
    same delta to a packed q/k/v output, with graph rows padded by base rows."""
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
    batch.graph_segments = torch.zeros(2 * num_slots + 8, dtype=torch.int32, device=DEVICE)
    batch.use_graph_rows(6)
    batch.load_graph_rows(rows)
    triton_out = base.clone()
    stack._add_triton(x, triton_out)
    torch.testing.assert_close(triton_out, grouped, atol=1e-4, rtol=1e-4)
    assert torch.equal(grouped[1], base[1]) and not torch.equal(grouped[0], base[0])
