"""The processes of a tensor-parallel engine: rank 0 is this process (engine loop, scheduler,
sampler); ranks 1..tp-1 are spawned workers that build their shard of the model and serve the
calls rank 0 broadcasts (step_channel.py). A watchdog thread notices a worker that dies within
a fraction of a second; rank 0's runner then fails instead of waiting on a collective."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .....domain.errors import EngineFailed
from .parallel_state import reset_tp_group, set_tp_group

logger = logging.getLogger(__name__)

# A collective that waits longer than this on a silent peer raises instead of hanging.
_COLLECTIVE_TIMEOUT = timedelta(seconds=60)
_WATCH_INTERVAL_S = 0.2


@dataclass(frozen=True)
class Rendezvous:
    """Where the ranks of one engine meet: torch.distributed's TCP store."""

    host: str
    port: int
    world_size: int
    backend: str  # nccl on CUDA, gloo on the CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rdv: Rendezvous, rank: int) -> None:
    """Enter the process group and make it this process's tensor-parallel group."""
    if rdv.backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(
        rdv.backend,
        init_method=f"tcp://{rdv.host}:{rdv.port}",
        rank=rank,
        world_size=rdv.world_size,
        timeout=_COLLECTIVE_TIMEOUT,
    )
    set_tp_group(rank, rdv.world_size, None)


def leave_group() -> None:
    reset_tp_group()
    if dist.is_initialized():
        dist.destroy_process_group()


def _abort_collectives() -> None:
    """Make a collective stuck on the dead rank return with an error (NCCL would wait for
    its timeout; gloo already fails when the peer's sockets close)."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None and dist.is_initialized():
        try:
            abort()
        except Exception:  # best effort: the step's own error or timeout still comes
            logger.debug("could not abort the process group", exc_info=True)


class LocalWorkers:
    """Ranks 1..tp-1 as spawned processes on this machine, watched."""

    def __init__(self, target: Callable[..., None], args: tuple, rdv: Rendezvous) -> None:
        ctx = mp.get_context("spawn")
        self.procs = [
            ctx.Process(target=target, args=(rank, rdv, *args), daemon=True, name=f"tp-{rank}")
            for rank in range(1, rdv.world_size)
        ]
        # Workers inherit this, so that a CPU group does not oversubscribe the cores.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() // rdv.world_size)))
        for proc in self.procs:
            proc.start()
        self.failure: str | None = None
        self._closing = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="tp-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        while not self._closing.wait(_WATCH_INTERVAL_S):
            dead = [p for p in self.procs if not p.is_alive()]
            if dead:
                proc = dead[0]
                self.failure = (
                    f"tensor-parallel rank {proc.name[3:]} (pid {proc.pid}) exited with code "
                    f"{proc.exitcode}; the engine cannot go on: restart it"
                )
                logger.error(self.failure)
                if dist.is_initialized() and dist.get_backend() == "nccl":
                    _abort_collectives()
                return

    def check(self, wait_s: float = 0.0) -> None:
        """Raise EngineFailed if a worker died, waiting up to `wait_s` for the watchdog's
        verdict (a step that just failed on a collective: was it a peer that died?)."""
        if self.failure is None and wait_s:
            self._watchdog.join(wait_s)
        if self.failure is not None:
            raise EngineFailed(self.failure)

    def close(self, timeout: float = 10) -> None:
        self._closing.set()
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)
