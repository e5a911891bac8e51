"""The processes of a tensor-parallel engine: rank 0 is this process (engine loop, scheduler,
sampler); ranks 1..tp-1 are workers that build their shard of the model and serve the calls
rank 0 broadcasts (step_channel.py): spawned processes here, Ray actors in ray_workers.py. A
watchdog thread notices a worker that dies within a fraction of a second; rank 0's runner then
fails instead of waiting on a collective."""

from __future__ import annotations

import gc
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
from .symmetric_all_reduce import try_symmetric_all_reduce

logger = logging.getLogger(__name__)

# A collective that waits longer than this on a silent peer raises instead of hanging.
_COLLECTIVE_TIMEOUT = timedelta(seconds=60)
_WATCH_INTERVAL_S = 0.2
_LEAVE_TIMEOUT_S = 30.0


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


def join_group(rdv: Rendezvous, rank: int, cuda_index: int | None = None) -> None:
    """Enter the process group and make it this process's tensor-parallel group.
    `cuda_index`: the GPU this rank drives (default: its rank among the visible GPUs)."""
    if rdv.backend == "nccl":
        index = rank % torch.cuda.device_count() if cuda_index is None else cuda_index
        torch.cuda.set_device(index)
    dist.init_process_group(
        rdv.backend,
        init_method=f"tcp://{rdv.host}:{rdv.port}",
        rank=rank,
        world_size=rdv.world_size,
        timeout=_COLLECTIVE_TIMEOUT,
    )
    small = None
    if rdv.backend == "nccl" and os.environ.get("LMDEPLOY_SYMM_ALLREDUCE", "1") != "0":
        small = try_symmetric_all_reduce(torch.device("cuda", torch.cuda.current_device()))
    set_tp_group(rank, rdv.world_size, None, small)


def leave_group(orderly: bool = True, timeout_s: float = _LEAVE_TIMEOUT_S) -> None:
    """Leave this rank's group. `orderly`: every rank leaves now, together (rank 0 after its
    STOP, a worker on receiving it), so NCCL's graceful destroy can finalize with the peers;
    otherwise (a rank died) the communicators are aborted, which needs no peer.
    CUDA graphs that captured collectives must be gone first: NCCL's teardown waits on them
    (pytorch/pytorch#115388; both the destroy and the abort hung on 2 H200s while the decode
    graphs lived). A teardown that still exceeds `timeout_s` is logged and left behind, so
    that closing an engine never hangs."""
    reset_tp_group()
    if not dist.is_initialized():
        return
    gc.collect()  # graphs the caller dropped but a reference cycle still holds
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        torch.cuda.synchronize()
    nccl = dist.get_backend() == "nccl"
    if nccl and not orderly:
        _bounded(_abort_collectives, timeout_s, "aborting the tensor-parallel group")
    if dist.is_initialized():  # an abort deregisters every group; gloo still needs this
        _bounded(dist.destroy_process_group, timeout_s, "leaving the tensor-parallel group")


def _bounded(step: Callable[[], None], timeout_s: float, what: str) -> None:
    """Run `step` in a daemon thread, waiting at most `timeout_s` for it."""
    thread = threading.Thread(target=step, name="tp-leave", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        logger.error("%s took over %.0f s; going on without it", what, timeout_s)


def _abort_collectives() -> None:
    """Make a collective stuck on the dead rank return with an error (NCCL would wait for
    its timeout; gloo already fails when the peer's sockets close)."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None and dist.is_initialized():
        try:
            abort()
        except Exception:  # best effort: the step's own error or timeout still comes
            logger.debug("could not abort the process group", exc_info=True)


class WatchedWorkers:
    """Ranks 1..tp-1, wherever they run, and a watchdog thread that notices one that died.
    Subclasses say how to find a dead rank (`_find_dead`) and how to stop them (`_stop`)."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self._listeners: list[Callable[[str], None]] = []
        self._lock = threading.Lock()  # a listener added as the watchdog fails is called once
        self._closing = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="tp-watchdog", daemon=True)

    def _find_dead(self) -> str | None:
        """What happened to a rank that is gone (None while all serve)."""
        raise NotImplementedError

    def _stop(self, timeout: float) -> None:
        raise NotImplementedError

    def _watch(self) -> None:
        while not self._closing.wait(_WATCH_INTERVAL_S):
            dead = self._find_dead()
            if dead is not None and not self._closing.is_set():
                with self._lock:
                    self.failure = f"{dead}; the engine cannot go on: restart it"
                logger.error(self.failure)
                if dist.is_initialized() and dist.get_backend() == "nccl":
                    _abort_collectives()
                for listener in self._listeners:
                    listener(self.failure)
                return

    def on_failure(self, listener: Callable[[str], None]) -> None:
        """Call `listener(reason)` when a rank dies (at once if one already has)."""
        with self._lock:
            failure = self.failure
            if failure is None:
                self._listeners.append(listener)
        if failure is not None:
            listener(failure)

    def check(self, wait_s: float = 0.0) -> None:
        """Raise EngineFailed if a worker died, waiting up to `wait_s` for the watchdog's
        verdict (a step that just failed on a collective: was it a peer that died?)."""
        if self.failure is None and wait_s:
            self._watchdog.join(wait_s)
        if self.failure is not None:
            raise EngineFailed(self.failure)

    def close(self, timeout: float = 10) -> None:
        self._closing.set()
        self._stop(timeout)


class LocalWorkers(WatchedWorkers):
    """Ranks 1..tp-1 as spawned processes on this machine."""

    def __init__(self, target: Callable[..., None], args: tuple, rdv: Rendezvous) -> None:
        super().__init__()
        ctx = mp.get_context("spawn")
        self.procs = [
            ctx.Process(target=target, args=(rank, rdv, *args), daemon=True, name=f"tp-{rank}")
            for rank in range(1, rdv.world_size)
        ]
        # Workers inherit this, so that a CPU group does not oversubscribe the cores.
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, os.cpu_count() // rdv.world_size)))
        for proc in self.procs:
            proc.start()
        self._watchdog.start()

    def _find_dead(self) -> str | None:
        for proc in self.procs:
            if not proc.is_alive():
                return (
                    f"tensor-parallel rank {proc.name[3:]} (pid {proc.pid}) exited with code "
                    f"{proc.exitcode}"
                )
        return None

    def _stop(self, timeout: float) -> None:
        for proc in self.procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout)
