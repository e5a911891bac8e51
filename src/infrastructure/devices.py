"""Device discovery: a device this build cannot drive is refused before any weight loads,
never quietly replaced by the CPU."""

from __future__ import annotations

from importlib.util import find_spec

from ..domain.errors import InvalidArgument


def require_device(device_type: str) -> None:
    """Raise, saying what to do, when `device_type` names a device this build cannot run on.

    'cuda' on a machine without CUDA runs on the CPU, as the default must work everywhere;
    'ascend' is asked for on purpose, so it needs torch_npu and an Ascend adapter."""
    if device_type != "ascend":
        return
    if find_spec("torch_npu") is None:
        raise InvalidArgument(
            "device_type",
            "'ascend' runs on Huawei Ascend NPUs through torch_npu, which is not installed: "
            "pip install torch_npu (the release that matches your torch and CANN), or use "
            "device_type='cuda' or 'cpu'",
        )
    raise InvalidArgument(
        "device_type",
        "'ascend': torch_npu is installed, but this build has no Ascend adapter yet "
        "(lmdeploy.adapters.engines.ascend does not exist), so nothing can run on the NPU; "
        "use device_type='cuda' or 'cpu'",
    )
