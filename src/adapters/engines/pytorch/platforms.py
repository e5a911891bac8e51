"""The device the engine runs on, as the builder and the runner see it: the torch device, how
to wait for it, how much memory the KV cache may take, what it can run besides plain torch ops.

One class per device, chosen once (`infrastructure/devices.py`); the builder asks it and hands
the runner what it decided (the device, graphs or not). The layers still pick their kernels
from each tensor's device (`layers/`, `backends/`): Triton on CUDA, the C kernels on the CPU,
torch ops everywhere else (the NPU of `engines/ascend`). What else still tests the device's
type are CUDA-only host-side savings (pinned staging buffers, graph input copies) and the CPU's
own kernels and lazily mapped cache, which an NPU rightly goes without.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

_CPU_CACHE_CAP = 4 << 30  # bytes: a sane ceiling for the KV cache in host memory


class Platform(ABC):
    """A device type. Class attributes say what the device can do; methods reach its runtime."""

    name: str
    # Decode steps captured as CUDA graphs (runner/cuda_graph.py) when eager_mode is off.
    supports_graphs: bool = False
    # Weights reordered into the backend's own dense layout (the CPU's oneDNN blocks).
    packs_linears: bool = False
    # torch.distributed's backend for tensor parallelism; None: tp=1 only on this device.
    dist_backend: str | None = None

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until the work queued on the device has finished."""

    @abstractmethod
    def free_memory(self) -> int:
        """Bytes the KV cache may be sized against (`cache_max_entry_count` of them)."""

    def default_dtype(self, checkpoint_dtype: str) -> torch.dtype:
        """dtype='auto': the checkpoint's half precision on an accelerator."""
        return torch.bfloat16 if "bfloat16" in checkpoint_dtype else torch.float16

    @abstractmethod
    def default_max_batch_size(self) -> int:
        """max_batch_size when not given: 'set according to the device', as documented."""

    def release_cached_memory(self) -> None:
        """Hand the memory that freed tensors left in the runtime's cache back to the device
        (an engine closed): another process, or the next engine's KV cache, may use it. The
        CPU's allocator returns large blocks to the system by itself."""
        return None


class CpuPlatform(Platform):
    name = "cpu"
    packs_linears = True
    dist_backend = "gloo"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def synchronize(self) -> None:
        return None  # CPU ops have returned by the time the next line runs

    def free_memory(self) -> int:
        return _CPU_CACHE_CAP

    def default_dtype(self, checkpoint_dtype: str) -> torch.dtype:
        return torch.float32  # half precision is emulated, slowly, on most CPUs

    def default_max_batch_size(self) -> int:
        return 32


class CudaPlatform(Platform):
    name = "cuda"
    supports_graphs = True
    dist_backend = "nccl"

    @property
    def device(self) -> torch.device:
        return torch.device("cuda")

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def free_memory(self) -> int:
        torch.cuda.empty_cache()  # blocks the loader freed are free for the cache
        free, _ = torch.cuda.mem_get_info(self.device)
        return free

    def release_cached_memory(self) -> None:
        torch.cuda.empty_cache()

    def default_max_batch_size(self) -> int:
        """By the GPU's memory, as LMDeploy (256 on an A100, 512 on an H100) and SGLang do. On
        an H200, 512 against 256 gave +6% output tok/s and a 31% lower TTFT p50 on the
        1000-request log-normal workload (benchmark/NOTES.md)."""
        total_gib = torch.cuda.get_device_properties(self.device).total_memory / 2**30
        return 512 if total_gib >= 79 else 256 if total_gib >= 39 else 128
