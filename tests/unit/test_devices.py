"""Device choices: device_type picks one Platform (infrastructure/devices.py). 'ascend' needs
torch_npu (its absence names what to install, never a run on the CPU instead) and then runs
on the NPU platform, checked here with a stand-in torch_npu module; the CUDA default
max_batch_size follows the GPU's memory."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

from lmdeploy import PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.ascend.npu import NpuPlatform
from lmdeploy.adapters.engines.pytorch import builder
from lmdeploy.adapters.engines.pytorch.platforms import CpuPlatform, CudaPlatform
from lmdeploy.adapters.loaders.model_source import ModelSource
from lmdeploy.domain.errors import InvalidArgument, InvalidConfig
from lmdeploy.infrastructure.devices import platform_for

FREE, TOTAL = 3 << 30, 8 << 30


@pytest.fixture
def torch_npu(monkeypatch):
    """A stand-in `torch_npu` with one visible NPU; `calls` records the runtime calls made."""
    calls: list[tuple] = []

    def record(name, value=None):
        return lambda *args: calls.append((name, *args)) or value

    module = types.ModuleType("torch_npu")
    module.npu = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        current_device=lambda: 1,
        synchronize=record("synchronize"),
        empty_cache=record("empty_cache"),
        mem_get_info=record("mem_get_info", (FREE, TOTAL)),
    )
    module.calls = calls
    monkeypatch.setitem(sys.modules, "torch_npu", module)
    return module


def ascend(**options) -> PytorchEngineConfig:
    return PytorchEngineConfig(device_type="ascend", **options)


def test_ascend_without_torch_npu_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # an import of it fails
    with pytest.raises(InvalidArgument, match="pip install torch_npu"):
        pipeline(None, backend_config=ascend())


def test_the_device_is_checked_before_the_model_is_looked_up(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    with pytest.raises(InvalidArgument, match="pip install torch_npu"):
        pipeline(str(tmp_path / "no-such-model"), backend_config=ascend())


def test_ascend_when_torch_npu_cannot_load_cann_says_what_to_source(tmp_path, monkeypatch):
    package = tmp_path / "torch_npu"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise ImportError('libascend_hal.so: cannot open shared object file')"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    with pytest.raises(InvalidArgument, match="libascend_hal.so.*set_env.sh"):
        platform_for(ascend())


def test_ascend_with_torch_npu_selects_the_npu_platform(torch_npu):
    platform = platform_for(ascend(eager_mode=True))
    assert isinstance(platform, NpuPlatform)
    assert platform.index == 1  # torch_npu's current device
    assert not platform.supports_graphs and not platform.packs_linears
    assert platform.dist_backend is None


def test_npu_platform_reaches_the_runtime(torch_npu):
    platform = platform_for(ascend(eager_mode=True))
    platform.synchronize()
    assert platform.free_memory() == FREE
    assert torch_npu.calls == [("synchronize",), ("empty_cache",), ("mem_get_info", 1)]


def test_npu_defaults_follow_lmdeploy_0_6_5(torch_npu):
    platform = platform_for(ascend(eager_mode=True))
    assert platform.default_max_batch_size() == 16
    assert platform.default_dtype("bfloat16") == torch.bfloat16  # 0.6.5: bf16 on the 910
    assert platform.default_dtype("float16") == torch.float16


def test_ascend_graph_mode_runs_eagerly_and_says_so(torch_npu, caplog):
    with caplog.at_level(logging.WARNING, logger="lmdeploy.devices"):
        platform = platform_for(ascend())  # eager_mode=False: 0.6.5's graph mode
    assert isinstance(platform, NpuPlatform)
    assert "eager_mode=True" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmdeploy.devices"):
        platform_for(ascend(eager_mode=True))
    assert caplog.text == ""


def test_ascend_without_a_visible_npu_says_what_to_check(torch_npu):
    torch_npu.npu.is_available = lambda: False
    with pytest.raises(InvalidArgument, match="npu-smi info"):
        platform_for(ascend())


def test_tensor_parallel_on_the_npu_is_refused_before_loading(torch_npu):
    source = ModelSource("gguf", None, "SmolLM2-135M-Instruct")
    with pytest.raises(InvalidConfig, match="tp=2 on npu"):
        builder.build(source, ascend(tp=2), platform_for(ascend(eager_mode=True)))


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_cpu_and_cuda_without_a_gpu_select_the_cpu(device_type, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    platform = platform_for(PytorchEngineConfig(device_type=device_type))
    assert isinstance(platform, CpuPlatform)
    assert platform.default_max_batch_size() == 32
    assert platform.default_dtype("bfloat16") == torch.float32


def test_cuda_with_a_gpu_selects_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    platform = platform_for(PytorchEngineConfig(device_type="cuda"))
    assert isinstance(platform, CudaPlatform)
    assert platform.supports_graphs and platform.dist_backend == "nccl"


@pytest.mark.parametrize(("gib", "want"), [(141, 512), (80, 512), (40, 256), (24, 128)])
def test_default_max_batch_size_follows_gpu_memory(gib, want, monkeypatch):
    props = types.SimpleNamespace(total_memory=gib * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert CudaPlatform().default_max_batch_size() == want


def test_grouped_lora_rows_live_on_the_steps_device():
    """The torch path of LoRA (every device but CUDA) indexes the device's output with them."""
    from lmdeploy.adapters.engines.pytorch.layers.lora import LoraBatch

    batch = LoraBatch(2, torch.ones(2))
    batch.set_rows([1, -1, 0, 1], torch.device("meta"))  # neither CPU nor CUDA, as an NPU
    assert [(slot, rows.device.type) for slot, rows in batch.groups] == [(1, "meta"), (0, "meta")]


@pytest.mark.parametrize("command", [["serve", "api_server"], ["chat"]])
def test_the_cli_takes_0_6_5s_device_flag(command):
    from lmdeploy.adapters.cli.main import build_parser
    from lmdeploy.adapters.cli.options import engine_config_from

    args = build_parser().parse_args([*command, "MODEL", "--device", "ascend", "--eager-mode"])
    config = engine_config_from(args)
    assert (config.device_type, config.eager_mode) == ("ascend", True)


def test_decode_context_is_built_once_a_step_off_the_cpu():
    """On a device other than the CPU (an NPU), the torch decode path reads the contexts'
    padded slots: built once in the step's metadata, not again in every layer."""
    from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
    from lmdeploy.adapters.engines.pytorch.layers.attention import prepare_metadata

    def on_meta(values):
        return torch.tensor(values, dtype=torch.int64, device="meta")

    meta = AttentionMetadata(
        slot_mapping=on_meta([20, 40]),
        block_tables=on_meta([[0, 1], [2, 0]]),
        context_lens=on_meta([21, 9]),
        query_lens=[1, 1],
        context_lens_list=[21, 9],
        is_decode=True,
        num_cached_list=[20, 8],
    )
    prepare_metadata(meta, block_size=16)
    assert meta.context_slots is not None and meta.context_slots.shape == (2, 21)
