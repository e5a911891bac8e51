"""Huawei Ascend NPUs through torch_npu, as a third `Platform` beside the CPU and CUDA.

The engine runs on `torch.device('npu')` with the torch-native backend: the layers see
tensors that are neither CUDA nor CPU, so attention, rotary, norms and sampling take the
torch ops of `backends/torch_native` (no Triton, no C kernels); no decode graphs, no oneDNN
layout; the KV cache is allocated on the NPU and sized from its free memory.

torch_npu is imported when the platform is loaded (the import registers the 'npu' device with
torch) and its runtime is reached as `torch_npu.npu` at each call, so that nothing here holds
a module and the platform pickles to the processes of other ranks.

Not run on Ascend hardware: written against torch_npu's documented `torch_npu.npu` API and
tested with a stand-in module on the CPU (tests/unit/test_ascend_platform.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from ....domain.errors import InvalidArgument
from ..pytorch.platforms import Platform

# LMDeploy 0.6.5's default for 'ascend' (`get_max_batch_size`): an NPU is not a GPU with more
# memory, and its torch-native attention pads each decode batch to its longest context.
_DEFAULT_MAX_BATCH_SIZE = 16


def _runtime() -> ModuleType:
    return importlib.import_module("torch_npu").npu


class NpuPlatform(Platform):
    name = "npu"

    def __init__(self, index: int) -> None:
        self.index = index

    @property
    def device(self) -> torch.device:
        return torch.device("npu", self.index)

    def synchronize(self) -> None:
        _runtime().synchronize()

    def free_memory(self) -> int:
        runtime = _runtime()
        runtime.empty_cache()  # blocks the loader freed are free for the cache
        free, _ = runtime.mem_get_info(self.index)
        return int(free)

    def default_max_batch_size(self) -> int:
        return _DEFAULT_MAX_BATCH_SIZE


def load() -> NpuPlatform:
    """The NPU this process drives (torch_npu's current device), or an error saying what to
    install or check."""
    try:
        torch_npu = importlib.import_module("torch_npu")
    except ModuleNotFoundError:
        raise InvalidArgument(
            "device_type",
            "'ascend' runs on Huawei Ascend NPUs through torch_npu, which is not installed: "
            "pip install torch_npu (the release that matches your torch and CANN), or use "
            "device_type='cuda' or 'cpu'",
        ) from None
    runtime = torch_npu.npu
    if not runtime.is_available() or runtime.device_count() == 0:
        raise InvalidArgument(
            "device_type",
            "'ascend': torch_npu is installed but sees no NPU; check the driver with "
            "`npu-smi info` and ASCEND_RT_VISIBLE_DEVICES (in Docker, the Ascend Docker "
            "Runtime), or use device_type='cuda' or 'cpu'",
        )
    return NpuPlatform(runtime.current_device())
