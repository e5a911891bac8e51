"""`lmdeploy lite auto_awq`: 4-bit weights by AWQ (activation-aware weight quantisation).

Calibration text runs through the float model one decoder layer at a time; per layer, each
group of linears sharing an input gets per-input-channel scales from the activations'
mean magnitude (s = mean|x|^alpha), folded into the producer of that input; the weights are
clipped and quantised to 4-bit codes with a scale and a zero point per `w_group_size` inputs,
and saved as an AutoAWQ "gemm" checkpoint the engine loads. As LMDeploy 0.6.5,
`search_scale` decides whether alpha is searched (a grid over [0, 1), the value giving the
smallest output error of the quantised group wins) or fixed at 0.5. The torch work is an
`AwqModel` adapter's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ...domain.errors import InvalidArgument
from .calib_data import CalibrationOptions, calib_samples, read_calib_texts

# 0.6.5's ratio without --search-scale.
FIXED_ALPHA = 0.5

T = TypeVar("T")


@dataclass(frozen=True)
class AwqPlan:
    """What the adapter does to each layer: the alphas tried (one: no search; (0.0,) alone is
    plain round-to-nearest), the group size, and the clip search's grid (0: no clipping) and
    how many input rows it measures on."""

    alphas: tuple[float, ...]
    group_size: int
    clip_grid: int = 20
    clip_tokens: int = 512


class AwqModel(Protocol):
    """A float model opened for AWQ."""

    num_layers: int

    def encode(self, text: str) -> list[int]: ...

    def check_group_size(self, group_size: int) -> None:
        """Raise InvalidArgument('w_group_size') naming a linear the size does not divide."""

    def start(self, batches: list[list[list[int]]]) -> None:
        """Embed the calibration batches: the first layer's inputs."""

    def quantize_layer(self, index: int, plan: AwqPlan) -> None:
        """Search, fold and quantise layer `index`; its outputs become the next one's inputs."""

    def save(self, work_dir: Path, quantization_config: dict[str, Any]) -> None:
        """The checkpoint, its config.json (with `quantization_config`) and the tokenizer."""


@dataclass(frozen=True)
class AutoAwqOptions(CalibrationOptions):
    w_bits: int = 4
    w_sym: bool = False
    w_group_size: int = 128
    # Not flags of 0.6.5: the search's resolution (AutoAWQ's defaults), coarser in tests.
    search_grid: int = 20
    clip_grid: int = 20

    def validate(self) -> None:
        self.validate_calibration()
        if self.w_bits != 4:
            raise InvalidArgument(
                "w_bits", f"{self.w_bits}-bit weights are not supported; this build makes 4-bit"
            )
        if self.w_sym:
            raise InvalidArgument(
                "w_sym",
                "symmetric AWQ has no zero points, which the AutoAWQ gemm layout stores; "
                "drop --w-sym",
            )
        if self.w_group_size < 8 or self.w_group_size % 8:
            raise InvalidArgument(
                "w_group_size",
                f"must be a positive multiple of 8 (e.g. 128), got {self.w_group_size}",
            )
        if self.search_grid < 1 or self.clip_grid < 0:
            raise InvalidArgument(
                "search_grid", "search_grid must be >= 1 and clip_grid >= 0 (0: no clipping)"
            )

    def plan(self) -> AwqPlan:
        grid = self.search_grid
        alphas = tuple(i / grid for i in range(grid)) if self.search_scale else (FIXED_ALPHA,)
        return AwqPlan(alphas, self.w_group_size, self.clip_grid)

    def quantization_config(self) -> dict[str, Any]:
        return {
            "quant_method": "awq",
            "version": "gemm",
            "bits": self.w_bits,
            "group_size": self.w_group_size,
            "zero_point": not self.w_sym,
        }


def auto_awq(
    open_model: Callable[[], AwqModel],
    options: AutoAwqOptions,
    progress: Callable[[Iterable[T], int], Iterable[T]] = lambda it, total: it,
) -> Path:
    """Quantise the model `open_model()` loads as `options` say and write it to
    `options.work_dir`; returns that directory. Bad options and a missing calibration file
    fail before the model is loaded; a group size that does not divide a linear's inputs
    fails before calibration. `progress(iterable, total)` wraps the layers (a progress bar)."""
    options.validate()
    texts = read_calib_texts(options.calib_dataset)
    model = open_model()
    model.check_group_size(options.w_group_size)
    samples = calib_samples(texts, model.encode, options.calib_samples, options.calib_seqlen)
    size = options.batch_size
    model.start([samples[i : i + size] for i in range(0, len(samples), size)])
    plan = options.plan()
    for index in progress(range(model.num_layers), model.num_layers):
        model.quantize_layer(index, plan)
    work_dir = Path(options.work_dir)
    model.save(work_dir, options.quantization_config())
    return work_dir
