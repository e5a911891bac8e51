"""Loading our C kernels must not change the process's floating-point state: a library linked
with -ffast-math sets flush-to-zero for every float op of torch and numpy after it loads."""

from __future__ import annotations

import numpy as np
import pytest

from lmdeploy.adapters.engines.pytorch.backends.cpu import build

SOURCES = sorted(path.stem for path in build._CSRC.glob("*.c"))


@pytest.mark.parametrize("name", SOURCES)
def test_loading_a_kernel_keeps_subnormal_floats(name):
    if build.load(name) is None:
        pytest.skip("no C compiler or CPU kernels disabled")
    tiny = np.float32(1e-40)  # subnormal: flushed to zero under FTZ/DAZ
    assert tiny * np.float32(1.0) != 0, f"loading {name}.c turned on flush-to-zero"
