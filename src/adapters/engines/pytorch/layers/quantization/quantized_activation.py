"""A linear's input that the op before it has already quantised per token.

An 8-bit linear quantises its input before its GEMM; where that input comes straight out of an
RMSNorm or a SiLU-and-mul, the norm or activation kernel quantises its own output instead, so
the bf16 activation is never written and read back (one launch fewer a linear, which at decode
sizes is most of the cost). `fuse_input_quant` (`../linear.py`) sets this up after loading;
model files keep passing what they pass, unaware of the carrier.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class QuantizedActivation(NamedTuple):
    values: torch.Tensor  # [..., K] int8 or float8_e4m3fn codes
    scales: torch.Tensor  # [..., 1] fp32, one per token: x ~= values * scales
    out_dtype: torch.dtype  # the float dtype of the unquantised input, which the output takes
