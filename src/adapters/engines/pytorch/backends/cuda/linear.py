"""Which dense linears multiply one row with the decode GEMV (lmdeploy_kernels/dense_gemv.py) instead of
cuBLAS: chosen per shape by timing both at load, on this GPU, as the decode graphs run them.

cuBLAS is at the byte floor on some shapes and well under it on others (benchmark/NOTES.md),
and which ones depends on the GPU and the library versions: so each distinct (N, K, dtype,
bias) of the model's dense linears is timed at M = 1 as a CUDA-graph replay over weights that
do not fit in L2 (the model's own of that shape, plus copies where they are fewer than
`COLD_L2_MULTIPLE` L2s), cuBLAS against a few tile choices of the GEMV, and the fastest
strictly faster than cuBLAS is kept; a tie keeps cuBLAS. Where the decode chain runs with
programmatic dependent launch (lmdeploy_kernels/pdl.py), a timing alone misses that cuBLAS breaks the
chain on both sides: the GEMV is credited the two overlaps it keeps (`PDL_PAIR_US` each, measured).
Rank 0's choice is broadcast, so every tensor-parallel rank runs the same kernels. Imported only
where CUDA runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ......kernels.dense_gemv import dense_gemv, gemv_candidates
from ......kernels.pdl import pdl_enabled
from ...distributed.parallel_state import tp_group, tp_rank, tp_size

logger = logging.getLogger(__name__)

Config = dict[str, int]
Kernel = Callable[..., torch.Tensor]
COLD_L2_MULTIPLE = 2  # weights cycled per replay span at least this many L2s
REPLAYS = 5  # timed replays a round; the best round counts
ROUNDS = 5
# What one kernel boundary of the batch-1 chain gained with PDL on an H200: 0.78 (Mistral-7B)
# and 0.93 us (Llama-3-8B) a pair (benchmark/NOTES.md, session 8).
PDL_PAIR_US = 0.8


@dataclass(frozen=True, order=True)
class GemvShape:
    """What a timing holds for: y [1, n] = x [1, k] @ W [n, k]^T, in `dtype`, with a bias or not."""

    n: int
    k: int
    dtype: str
    bias: bool

    @classmethod
    def of(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> GemvShape:
        return cls(weight.shape[0], weight.shape[1], str(weight.dtype), bias is not None)


def fastest(cublas_us: float, gemv_us: Sequence[float], credit_us: float = 0.0) -> int | None:
    """The index of the fastest GEMV candidate strictly faster than cuBLAS once `credit_us` (what
    the GEMV saves beside the kernel itself) is taken off it; None keeps cuBLAS (ties included:
    the library is the default)."""
    best = min(range(len(gemv_us)), key=gemv_us.__getitem__, default=None)
    return best if best is not None and gemv_us[best] - credit_us < cublas_us else None


class DecodeGemv:
    """F.linear, but a one-row input of the measured shape runs the GEMV with its tiles."""

    def __init__(self, shape: GemvShape, config: Config, kernel: Kernel = dense_gemv) -> None:
        self.shape, self.config, self.kernel = shape, config, kernel
        self._dims = (shape.n, shape.k)
        # The tiles of the one-launch kernel that also runs the op after this projection
        # (gemv_epilogues.py), where timing at load found it faster than the two launches.
        self.epilogue: Config | None = None

    def with_epilogue(self, tiles: Config) -> DecodeGemv:
        """This kernel, for a projection whose epilogue kernel runs with `tiles`."""
        kernel = DecodeGemv(self.shape, self.config, self.kernel)
        kernel.epilogue = tiles
        return kernel

    def covers(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        """Whether this call is the one-row product of the shape it was timed on."""
        one_row = x.numel() == x.shape[-1]
        return (
            one_row
            and tuple(weight.shape) == self._dims
            and GemvShape.of(weight, bias) == self.shape
        )

    def __call__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.covers(x, weight, bias):
            return self.kernel(x, weight, bias, self.config)
        return F.linear(x, weight, bias)


def graph_us(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], weights) -> float:
    """Microseconds a call of `fn` over `weights` in turn, replayed from one CUDA graph."""
    for w, b in weights[:1]:
        fn(w, b)  # compiles and allocates the split-K counters outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w, b in weights:
            fn(w, b)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(ROUNDS):
        start.record()
        for _ in range(REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / (REPLAYS * len(weights)))
    del graph
    return best


def cold_weights(weights: list[tuple[torch.Tensor, torch.Tensor | None]]):
    """The model's weights of one shape, plus copies until they span `COLD_L2_MULTIPLE` L2s."""
    w0, b0 = weights[0]
    l2 = torch.cuda.get_device_properties(w0.device).L2_cache_size
    each = w0.numel() * w0.element_size()
    copies = max(0, -(-COLD_L2_MULTIPLE * l2 // each) + 1 - len(weights))
    return list(weights) + [(w0.clone(), b0) for _ in range(copies)]


def time_shape(
    shape: GemvShape, weights: list[tuple[torch.Tensor, torch.Tensor | None]]
) -> tuple[float, list[tuple[Config, float]]]:
    """cuBLAS's microseconds and each candidate's, for one row of x."""
    cold = cold_weights(weights)
    x = torch.randn(1, shape.k, dtype=cold[0][0].dtype, device=cold[0][0].device)
    cublas = graph_us(lambda w, b: F.linear(x, w, b), cold)
    timed = [
        (c, graph_us(lambda w, b, c=c: dense_gemv(x, w, b, c), cold))
        for c in gemv_candidates(shape.n, shape.k)
    ]
    return cublas, timed


def broadcast_choices(choices: list[int]) -> list[int]:
    """Rank 0's choices on every rank (the others add zeros to them)."""
    if tp_size() == 1:
        return choices
    agreed = torch.tensor(choices if tp_rank() == 0 else [0] * len(choices), device="cuda")
    dist.all_reduce(agreed, group=tp_group())
    return agreed.tolist()


@torch.inference_mode()
def choose_decode_gemvs(
    weights: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    timer: Callable[[GemvShape, list], tuple[float, list[tuple[Config, float]]]] = time_shape,
) -> list[DecodeGemv | None]:
    """For each (weight, bias) of the model's dense linears, its one-row kernel: a
    `DecodeGemv` where the GEMV beat cuBLAS on its shape (`timer`: `time_shape`), else None.
    Every tensor-parallel rank must call this with weights of the same shapes, in the same
    order (their shards are)."""
    if not weights:
        return []
    by_shape: dict[GemvShape, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
    for w, b in weights:
        by_shape.setdefault(GemvShape.of(w, b), []).append((w, b))
    shapes = sorted(by_shape)
    credit = 2 * PDL_PAIR_US if pdl_enabled(weights[0][0].device) else 0.0
    configs: dict[GemvShape, list[Config]] = {}
    choices = [0] * len(shapes)
    try:
        for i, shape in enumerate(shapes):
            cublas, timed = timer(shape, by_shape[shape])
            configs[shape] = [c for c, _ in timed]
            best = fastest(cublas, [us for _, us in timed], credit)
            choices[i] = 0 if best is None else best + 1
            logger.info(
                "decode GEMV %d x %d %s%s: cuBLAS %.1f us, ours %s (credit %.1f) -> %s",
                shape.k, shape.n, shape.dtype, " +bias" if shape.bias else "", cublas,
                ", ".join(f"{us:.1f}" for _, us in timed), credit,
                "cuBLAS" if best is None else f"ours {timed[best][0]}",
            )  # fmt: skip
    except Exception:  # an optimisation only: a failed timing must not fail the engine
        logger.warning("timing the decode GEMV failed: cuBLAS for every shape", exc_info=True)
        choices = [0] * len(shapes)  # still joins the broadcast below, as every rank must
    torch.cuda.empty_cache()  # the copies and graphs: the KV cache is sized after this
    chosen = {
        shape: DecodeGemv(shape, configs[shape][choice - 1])
        for shape, choice in zip(shapes, broadcast_choices(choices), strict=True)
        if choice
    }
    return [chosen.get(GemvShape.of(w, b)) for w, b in weights]
