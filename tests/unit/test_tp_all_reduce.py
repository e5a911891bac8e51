"""Which all-reduce a tensor-parallel sum takes: the small-tensor path where the group has one
and the tensor fits it, the process group's collective otherwise."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from lmdeploy.adapters.engines.pytorch.distributed import parallel_state
from lmdeploy.adapters.engines.pytorch.distributed.symmetric_all_reduce import (
    try_symmetric_all_reduce,
)
from lmdeploy.adapters.engines.pytorch.distributed.workers import free_port


class _Doubling:
    """Stands for the peers: a two-rank sum of equal shards doubles the tensor."""

    def __init__(self, max_numel: int) -> None:
        self.max_numel, self.calls = max_numel, 0

    def fits(self, x: torch.Tensor) -> bool:
        return x.numel() <= self.max_numel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mul_(2)


@pytest.fixture
def group_of_one():
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    yield
    parallel_state.reset_tp_group()
    dist.destroy_process_group()


def test_small_sums_take_the_small_path_and_large_ones_the_group(group_of_one):
    small = _Doubling(max_numel=8)
    parallel_state.set_tp_group(0, 2, None, small)
    assert parallel_state.all_reduce(torch.ones(8)).tolist() == [2.0] * 8
    big = torch.ones(9)
    assert parallel_state.all_reduce(big) is big  # the gloo group of one: the identity
    assert big.tolist() == [1.0] * 9 and small.calls == 1


def test_without_peer_memory_every_sum_stays_on_the_group(group_of_one):
    """The CPU has no symmetric memory: the setup says so instead of failing the build."""
    assert try_symmetric_all_reduce(torch.device("cpu")) is None
