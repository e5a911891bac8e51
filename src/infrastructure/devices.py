"""Device discovery: the one place that turns `device_type` into the engine's Platform. A
device this build cannot drive is refused before any weight loads, never quietly replaced by
the CPU."""

from __future__ import annotations

import logging

import torch

from ..adapters.engines.ascend import npu
from ..adapters.engines.pytorch.platforms import CpuPlatform, CudaPlatform, Platform
from ..application.configs import PytorchEngineConfig

logger = logging.getLogger("lmdeploy.devices")


def platform_for(config: PytorchEngineConfig) -> Platform:
    """'cuda' on a machine without CUDA runs on the CPU, as the default must work everywhere;
    'ascend' is asked for on purpose, so it needs torch_npu and a visible NPU."""
    if config.device_type == "ascend":
        platform = npu.load()
        if not config.eager_mode:
            # 0.6.5 compiles NPU graphs through dlinfer and ATB; here every step runs eagerly.
            logger.warning(
                "device_type='ascend' runs eagerly in this build: graph mode "
                "(eager_mode=False) is not available on the NPU; pass eager_mode=True "
                "(--eager-mode) to silence this"
            )
        return platform
    if config.device_type == "cuda" and torch.cuda.is_available():
        return CudaPlatform()
    return CpuPlatform()
