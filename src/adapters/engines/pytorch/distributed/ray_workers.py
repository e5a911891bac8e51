"""Ranks 1..tp-1 as Ray actors, for tensor parallelism across the machines of a Ray cluster.

A placement group reserves one bundle per rank (a GPU, or a CPU on a CPU engine); bundle 0
is pinned to this machine and stands for rank 0, which stays in this process (the engine loop
needs no actor). Each other bundle gets one actor; the actors are ranked so that those on this
machine come first, then the rest machine by machine. torch.distributed (NCCL, or gloo on the
CPU) carries every tensor, its rendezvous at this machine's address; Ray only places, starts
and watches the processes. An actor that dies resolves its `run` call with an error, which the
watchdog turns into the same EngineFailed as a spawned process that exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from .....domain.errors import InvalidConfig
from .workers import Rendezvous, WatchedWorkers, free_port

logger = logging.getLogger(__name__)

_PLACEMENT_TIMEOUT_S = 120


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise InvalidConfig(
            "distributed_executor_backend",
            "'ray' (and nnodes > 1) needs the ray package: pip install 'lmdeploy[ray]'",
        ) from exc
    return ray


class _Rank:
    """One worker rank, living in a Ray actor process."""

    def placement(self) -> tuple[str, list[int]]:
        import ray

        return ray.get_runtime_context().get_node_id(), [int(g) for g in ray.get_gpu_ids()]

    def run(self, target: Callable[..., None], rank: int, rdv: Rendezvous, args: tuple) -> None:
        target(rank, rdv, *args)


def connect(nnodes: int) -> Any:
    """The Ray cluster this process already joined, or the one at RAY_ADDRESS (`auto`: the one
    started on this machine by `ray start --head`), or, on one node, a fresh local one."""
    ray = _ray()
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or ("auto" if nnodes > 1 else None)
        ray.init(address=address, include_dashboard=False)
    alive = [node for node in ray.nodes() if node["Alive"]]
    if len(alive) < nnodes:
        raise InvalidConfig(
            "nnodes",
            f"nnodes={nnodes} but the Ray cluster has {len(alive)} node(s); on each other "
            f"machine run `ray start --address=<this machine's ip>:6379` first",
        )
    return ray


class RayWorkers(WatchedWorkers):
    """Ranks 1..tp-1 as actors placed by a placement group of the connected Ray cluster.
    `cuda_index`: after construction, the GPU rank 0 (this process) drives on a CUDA engine."""

    def __init__(
        self, target: Callable[..., None], args: tuple, world_size: int, backend: str, nnodes: int
    ) -> None:
        super().__init__()
        ray = connect(nnodes)
        from ray.util.placement_group import remove_placement_group

        self._ray, self._remove = ray, remove_placement_group
        self._actors: list[Any] = []
        here = ray.util.get_node_ip_address()
        self._group = self._reserve(world_size, backend == "nccl", here)
        try:
            placements = self._start_actors(world_size, backend == "nccl")
            nodes = {self._my_node} | {node for node, _ in placements}
            if len(nodes) != nnodes:
                logger.warning(
                    "the %d ranks landed on %d Ray node(s), not nnodes=%d",
                    world_size,
                    len(nodes),
                    nnodes,
                )
            self.cuda_index = (
                _free_local_gpu(self._my_node, placements) if backend == "nccl" else None
            )
        except BaseException:
            self._release()
            raise
        self.rdv = Rendezvous(here, free_port(), world_size, backend)
        self._runs = [
            a.run.remote(target, rank, self.rdv, args) for rank, a in enumerate(self._actors, 1)
        ]
        self._watchdog.start()

    @property
    def _my_node(self) -> str:
        return self._ray.get_runtime_context().get_node_id()

    def _reserve(self, world_size: int, gpu: bool, here: str) -> Any:
        """A bundle per rank; rank 0's on this machine (`node:<ip>` is Ray's resource of it)."""
        from ray.util.placement_group import placement_group

        unit = {"GPU": 1.0} if gpu else {"CPU": 1.0}
        bundles = [{**unit, f"node:{here}": 0.001}] + [dict(unit) for _ in range(world_size - 1)]
        group = placement_group(bundles, strategy="PACK")
        try:
            self._ray.get(group.ready(), timeout=_PLACEMENT_TIMEOUT_S)
        except self._ray.exceptions.GetTimeoutError as exc:
            self._remove(group)
            raise InvalidConfig(
                "tp",
                f"the Ray cluster cannot hold {world_size} ranks of {unit} (free: "
                f"{self._ray.available_resources()}); add nodes or lower tp",
            ) from exc
        return group

    def _start_actors(self, world_size: int, gpu: bool) -> list[tuple[str, list[int]]]:
        """An actor in each bundle but rank 0's, ordered this machine's first; their
        (node, GPU ids) in that order."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor = self._ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0)(_Rank)
        self._actors = [
            actor.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._group, placement_group_bundle_index=index
                )
            ).remote()
            for index in range(1, world_size)
        ]
        placements = self._ray.get([a.placement.remote() for a in self._actors])
        my_node = self._my_node
        order = sorted(range(len(self._actors)), key=lambda i: placements[i][0] != my_node)
        self._actors = [self._actors[i] for i in order]
        return [placements[i] for i in order]

    def _release(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._remove(self._group)

    def _find_dead(self) -> str | None:
        ready, _ = self._ray.wait(self._runs, num_returns=1, timeout=0)
        if not ready:
            return None
        rank = self._runs.index(ready[0]) + 1
        try:
            self._ray.get(ready[0])
        except Exception as exc:  # the actor died, or its rank raised
            return f"tensor-parallel rank {rank} (a Ray actor) failed: {exc}"
        return f"tensor-parallel rank {rank} (a Ray actor) stopped serving"

    def _stop(self, timeout: float) -> None:
        # After rank 0's STOP the runs return; a rank that does not is killed.
        self._ray.wait(self._runs, num_returns=len(self._runs), timeout=timeout)
        self._release()


def _free_local_gpu(my_node: str, placements: list[tuple[str, list[int]]]) -> int:
    """A GPU of this machine that no actor here was given: rank 0's (its bundle reserved it)."""
    taken = {gpu for node, gpus in placements if node == my_node for gpu in gpus}
    free = [i for i in range(torch.cuda.device_count()) if i not in taken]
    if not free:
        raise InvalidConfig("tp", "Ray gave every GPU of this machine to other ranks")
    return free[0]
