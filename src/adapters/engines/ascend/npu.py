"""Huawei Ascend NPUs through torch_npu, as a third `Platform` beside the CPU and CUDA.

The engine runs on `torch.device('npu')` with the torch-native backend: the layers see
tensors that are neither CUDA nor CPU, so attention, rotary, norms and sampling take the
torch ops of `backends/torch_native` (no Triton, no C kernels); no decode graphs, no oneDNN
layout; the KV cache is allocated on the NPU and sized from its free memory.

torch_npu is imported when the platform is loaded (the import registers the 'npu' device with
torch); its runtime is reached as `torch_npu.npu` at each call, so the platform holds nothing
but the device's index.

Not run on Ascend hardware: written against torch_npu's `torch_npu.npu` API, tested with a
stand-in module (tests/unit/test_devices.py) and end to end with the CPU as the device
(tests/integration/test_ascend_torch_native.py).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from ....domain.errors import InvalidArgument
from ..pytorch.platforms import Platform

# LMDeploy 0.6.5's default for 'ascend' (`get_max_batch_size`). Here it also bounds the padded
# copy of the contexts that the torch-native decode attention makes for each batch.
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

    def release_cached_memory(self) -> None:
        _runtime().empty_cache()


def load() -> NpuPlatform:
    """The NPU this process drives (torch_npu's current device), or an error saying what to
    install or check."""
    try:
        torch_npu = importlib.import_module("torch_npu")
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torch_npu":
            raise InvalidArgument(
                "device_type",
                "'ascend' runs on Huawei Ascend NPUs through torch_npu, which is not installed: "
                "pip install torch_npu (the release that matches your torch and CANN), or use "
                "device_type='cuda' or 'cpu'",
            ) from None
        # Installed, but its CANN libraries or driver are not found (e.g. libascend_hal.so).
        raise InvalidArgument(
            "device_type",
            f"'ascend': torch_npu is installed but does not import ({exc}); source CANN's "
            f"set_env.sh (/usr/local/Ascend/ascend-toolkit/set_env.sh), and in Docker use the "
            f"Ascend Docker Runtime",
        ) from exc
    runtime = torch_npu.npu
    if not runtime.is_available() or runtime.device_count() == 0:
        raise InvalidArgument(
            "device_type",
            "'ascend': torch_npu is installed but sees no NPU; check the driver with "
            "`npu-smi info` and ASCEND_RT_VISIBLE_DEVICES (in Docker, the Ascend Docker "
            "Runtime), or use device_type='cuda' or 'cpu'",
        )
    return NpuPlatform(runtime.current_device())
