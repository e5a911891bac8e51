"""This process's tensor-parallel rank and group, and the collectives the layers use.

Set once per process before a model is built (`set_tp_group`); layers read it at construction
(their shard sizes) and in forward (the all-reduce after a row-parallel linear, the gather of
vocabulary-parallel logits). At tp=1 there is no group and every collective is the identity,
so single-device code pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from .....domain.errors import InvalidConfig

# torch 2.13 renamed all_gather_into_tensor (the name of 2.11, on the GPU image).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class SmallAllReduce(Protocol):
    """A faster path for small sums (symmetric_all_reduce.py), where the GPUs allow one."""

    def fits(self, x: torch.Tensor) -> bool: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class TPGroup:
    rank: int = 0
    size: int = 1
    group: dist.ProcessGroup | None = None
    small_all_reduce: SmallAllReduce | None = None


_current = TPGroup()


def set_tp_group(
    rank: int,
    size: int,
    group: dist.ProcessGroup | None,
    small_all_reduce: SmallAllReduce | None = None,
) -> None:
    global _current
    _current = TPGroup(rank, size, group, small_all_reduce)


def reset_tp_group() -> None:
    set_tp_group(0, 1, None)


def tp_rank() -> int:
    return _current.rank


def tp_size() -> int:
    return _current.size


def tp_group() -> dist.ProcessGroup | None:
    return _current.group


def has_small_all_reduce() -> bool:
    """Whether small sums take the one-shot path (symmetric_all_reduce.py) instead of NCCL."""
    return _current.small_all_reduce is not None


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of `x` over the ranks, in place (the partial sums of a row-parallel matmul)."""
    if _current.size == 1:
        return x
    small = _current.small_all_reduce
    if small is not None and small.fits(x):
        return small(x)
    dist.all_reduce(x, group=_current.group)
    return x


def all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` side by side along the last dimension, in rank order."""
    if _current.size == 1:
        return x
    size = _current.size
    out = torch.empty((size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _all_gather_single(out, x.contiguous(), group=_current.group)
    return torch.cat(out.chunk(size, 0), dim=-1)


def divide(total: int, what: str) -> int:
    """`total` split evenly over the ranks, refusing a shape that does not divide."""
    size = _current.size
    if total % size:
        raise InvalidConfig(
            "tp", f"tp={size} does not divide the model's {total} {what}; choose a tp that does"
        )
    return total // size


def local_kv_heads(num_heads: int, num_kv_heads: int, size: int | None = None) -> int:
    """KV heads a rank keeps (of `size` ranks, this group's by default): its share, or one
    replicated head when there are fewer KV heads than ranks (each rank then serves the query
    heads of the KV head it holds)."""
    size = _current.size if size is None else size
    if num_heads % size:
        raise InvalidConfig(
            "tp",
            f"tp={size} does not divide the model's {num_heads} attention heads "
            f"({num_kv_heads} KV heads); choose a tp that divides both",
        )
    if num_kv_heads % size == 0:
        return num_kv_heads // size
    if size % num_kv_heads == 0:
        return 1
    raise InvalidConfig(
        "tp",
        f"tp={size} neither divides nor is a multiple of the model's {num_kv_heads} KV heads "
        f"({num_heads} attention heads); choose a tp that does",
    )


def kv_head_of_rank(num_kv_heads: int) -> int:
    """The first KV head (of the checkpoint's) this rank holds."""
    size, rank = _current.size, _current.rank
    if num_kv_heads % size == 0:
        return rank * (num_kv_heads // size)
    return rank * num_kv_heads // size


def vocab_range(vocab_size: int) -> tuple[int, int]:
    """This rank's rows [start, start + per_rank) of a vocabulary padded to a multiple of the
    ranks (the last rank's tail rows stay zero)."""
    per_rank = -(-vocab_size // _current.size)
    return _current.rank * per_rank, per_rank
