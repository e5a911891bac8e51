"""Run the embedded model through the Ascend adapter's platform, hosted on the CPU: the
engine the NPU runs (torch-native layers, no decode graphs, no oneDNN layout, the cache sized
from the device's free memory), with a stand-in `torch_npu` runtime and the CPU as the device.

A script, run by tests/integration/test_ascend_torch_native.py in its own process: the
torch-native path needs the C kernels off (`LMDEPLOY_CPU_KERNELS=0`, read once per process),
and the stand-in module must not leak into other tests. Reads {"prompts", "max_new_tokens"}
as JSON on stdin; writes the greedy ids and what the platform was asked, as JSON, to the
file named by its argument.
"""

from __future__ import annotations

import json
import sys
import types

import torch
from dependency_injector import providers

FREE_BYTES = 1 << 30


def stand_in_torch_npu(calls: dict[str, int]) -> types.ModuleType:
    """torch_npu as the adapter uses it: `torch_npu.npu`'s runtime calls, counted."""

    def counted(name, value=None):
        def call(*args):
            calls[name] = calls.get(name, 0) + 1
            return value

        return call

    module = types.ModuleType("torch_npu")
    module.npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: 0,
        synchronize=counted("synchronize"),
        empty_cache=counted("empty_cache"),
        mem_get_info=counted("mem_get_info", (FREE_BYTES, 2 * FREE_BYTES)),
    )
    return module


def main() -> None:
    calls: dict[str, int] = {}
    sys.modules["torch_npu"] = stand_in_torch_npu(calls)
    from lmdeploy import GenerationConfig, PytorchEngineConfig
    from lmdeploy.adapters.engines.ascend.npu import NpuPlatform
    from lmdeploy.adapters.engines.pytorch.backends.cpu import ops as cpu_ops
    from lmdeploy.adapters.engines.pytorch.backends.cpu.linear import PackedLinear
    from lmdeploy.application.pipeline import Pipeline
    from lmdeploy.infrastructure.factory import build_container

    class CpuHostedNpu(NpuPlatform):
        """The NPU platform in every respect but the torch device."""

        @property
        def device(self) -> torch.device:
            return torch.device("cpu")

    request = json.load(sys.stdin)
    # float32 as the CPU's default path, which the ids are compared with (the NPU's 'auto'
    # would be the checkpoint's half precision).
    config = PytorchEngineConfig(
        device_type="ascend", eager_mode=True, dtype="float32", session_len=2048
    )
    container = build_container(None, config, backend="pytorch")
    selected = container.platform()
    container.platform.override(providers.Object(CpuHostedNpu(selected.index)))
    container.init_resources()
    pipe = Pipeline(container.generation(), container.model_name(), container.shutdown_resources)
    try:
        gen = GenerationConfig(max_new_tokens=request["max_new_tokens"], ignore_eos=True)
        responses = pipe(request["prompts"], gen_config=gen)
        runner = container.built_model().runner
        report = {
            "token_ids": [r.token_ids for r in responses],
            "selected": type(selected).__name__,
            "calls": calls,
            "max_batch_size": runner.max_batch_size,
            "graphs": runner.graphs is not None,
            "num_blocks": runner.cache.num_blocks,
            "block_bytes": sum(t[0].nbytes for layer in runner.kv_caches for t in layer),
            "cache_device": str(runner.kv_caches[0][0].device),
            # The torch-native path: no C kernel loaded, no linear in oneDNN's layout.
            "cpu_kernels": cpu_ops.available(torch.zeros(1)),
            "packed_linears": sum(isinstance(m, PackedLinear) for m in runner.model.modules()),
        }
    finally:
        pipe.close()
    with open(sys.argv[1], "w") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main()
