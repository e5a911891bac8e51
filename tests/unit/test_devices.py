"""Device choices: device_type="ascend" is refused with what is missing (never run on the CPU
instead), and the CUDA default max_batch_size follows the GPU's memory."""

from __future__ import annotations

import pytest

from lmdeploy import PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidArgument


def test_ascend_without_torch_npu_names_what_to_install():
    with pytest.raises(InvalidArgument, match="pip install torch_npu"):
        pipeline(None, backend_config=PytorchEngineConfig(device_type="ascend"))


def test_ascend_with_torch_npu_names_the_missing_adapter(tmp_path, monkeypatch):
    (tmp_path / "torch_npu").mkdir()
    (tmp_path / "torch_npu" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidArgument, match="no Ascend adapter"):
        pipeline(None, backend_config=PytorchEngineConfig(device_type="ascend"))


@pytest.mark.parametrize(("gib", "want"), [(141, 512), (80, 512), (40, 256), (24, 128)])
def test_default_max_batch_size_follows_gpu_memory(gib, want, monkeypatch):
    import types

    import torch

    from lmdeploy.adapters.engines.pytorch import builder

    props = types.SimpleNamespace(total_memory=gib * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert builder.default_max_batch_size(torch.device("cuda")) == want
    assert builder.default_max_batch_size(torch.device("cpu")) == 32
