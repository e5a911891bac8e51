"""`lmdeploy lite smooth_quant`: W8A8 (int8 or FP8 e4m3) by SmoothQuant, as LMDeploy 0.6.5 does.

Calibrate (per input channel, the largest |activation| each linear of the decoder layers
sees), migrate the activations' outliers into the weights (s = amax^alpha / w_amax^(1-alpha),
folded into the preceding norm and, where the shapes allow, v_proj -> o_proj and
up_proj -> down_proj), quantise each weight per output channel and save a checkpoint whose
config.json says `quantization_config: {quant_method: smooth_quant, quant_dtype}`. The torch
work is a `SmoothQuantModel` adapter's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ...domain.errors import InvalidArgument
from .calib_data import CalibrationOptions, calib_samples, read_calib_texts

# The CLI's names -> the checkpoint's `quant_dtype` (torch's dtype names, as 0.6.5 writes them).
QUANT_DTYPES = {"int8": "int8", "fp8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn"}
# SmoothQuant's migration strength; 0.6.5 fixes it at 0.5 for every model.
ALPHA = 0.5

T = TypeVar("T")


class SmoothQuantModel(Protocol):
    """A float model opened for W8A8 quantisation."""

    def encode(self, text: str) -> list[int]: ...

    def observe(self, batch: list[list[int]]) -> None:
        """Run the model on calibration samples, keeping each linear's input channel maxima."""

    def smooth(self, alpha: float) -> None: ...

    def quantize(self, quant_dtype: str) -> None: ...

    def save(self, work_dir: Path) -> None:
        """The quantised checkpoint, its config.json and the tokenizer files."""


@dataclass(frozen=True)
class SmoothQuantOptions(CalibrationOptions):
    quant_dtype: str = "int8"

    def validate(self) -> None:
        self.validate_calibration()
        if self.quant_dtype not in QUANT_DTYPES:
            raise InvalidArgument(
                "quant_dtype", f"'{self.quant_dtype}' is not one of {sorted(QUANT_DTYPES)}"
            )
        if self.search_scale:
            raise InvalidArgument(
                "search_scale",
                "the AWQ-style ratio search is not implemented for smooth_quant in this build; "
                "drop --search-scale (SmoothQuant's fixed alpha=0.5 is used)",
            )


def smooth_quant(
    open_model: Callable[[], SmoothQuantModel],
    options: SmoothQuantOptions,
    progress: Callable[[Iterable[T], int], Iterable[T]] = lambda it, total: it,
) -> Path:
    """Quantise the model `open_model()` loads as `options` say and write it to
    `options.work_dir`; returns that directory. Bad options and a missing calibration file
    fail before the model is loaded. `progress(iterable, total)` wraps the calibration
    batches (a progress bar)."""
    options.validate()
    texts = read_calib_texts(options.calib_dataset)
    model = open_model()
    samples = calib_samples(texts, model.encode, options.calib_samples, options.calib_seqlen)
    size = options.batch_size
    batches = [samples[i : i + size] for i in range(0, len(samples), size)]
    for batch in progress(batches, len(batches)):
        model.observe(batch)
    model.smooth(ALPHA)
    model.quantize(QUANT_DTYPES[options.quant_dtype])
    work_dir = Path(options.work_dir)
    model.save(work_dir)
    return work_dir
