"""A one-row decode step's projection and the op after it in one launch, where the projection
runs the decode GEMV (`linear.DecodeGemv`): q/k/v with rotary and the K/V cache write
(lmdeploy_kernels/qkv_rotary_gemv.py), gate/up with SiLU-and-mul (lmdeploy_kernels/gate_up_silu_gemv.py).

Whether the one launch is faster depends on the shape and the tiles (on an H200 it saved
~2.4 us on Llama-3-8B's q/k/v and lost ~1.6 us on Qwen2.5-7B's with the tiles the plain GEMV
had won: benchmark/NOTES.md, session 12), so at load each projection's epilogue kernel is timed
over the GEMV's tile candidates against the GEMV with its own tiles and then the separate op,
in a CUDA graph over cold weights, and kept only where faster (`choose_epilogues`).

At run time each `project_*` returns None where its launch does not apply, and the caller runs
the separate kernels: no faster epilogue was found, the projection has hooks (LoRA adds its
adapters' output to the projection's), the step is not one row, or the switch is off
(`LMDEPLOY_FUSED_QKV_ROTARY=0`, `LMDEPLOY_FUSED_GATE_UP_SILU=0`).

The RMSNorms between a layer's projections are links of that chain too: where a norm is linked
(`layers/norm.py`'s `link_norms`), the linear before it adds the residual in its GEMV's
epilogue (`project_add_residual`) and the projection after it, whose weight holds the norm's,
divides its input by its rms in its K loop (every `project_*` here and `project_normed`).
Imported only where CUDA runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ......kernels.dense_gemv import dense_gemv, gemv_candidates
from ......kernels.gate_up_silu_gemv import gate_up_silu_gemv
from ......kernels.qkv_rotary_gemv import qkv_rotary_gemv
from ......kernels.rms_norm import fused_add_rms_norm, rms_norm
from ......kernels.rotary import rotary
from ......kernels.silu_and_mul import silu_and_mul
from ..normed_input import NormedInput
from .linear import Config, DecodeGemv, GemvShape, broadcast_choices, cold_weights, graph_us

logger = logging.getLogger(__name__)

QKV_SWITCH, GATE_UP_SWITCH = "LMDEPLOY_FUSED_QKV_ROTARY", "LMDEPLOY_FUSED_GATE_UP_SILU"
# A norm link is kept unless its chain times this much slower than the norm's own launch: on an
# H200 the chains timed alone tied (+-0.5%) where linking both norms of Llama-3-8B's and
# Mistral-7B's layers gained 0.7-1.2 points of the batch-1 floor in the engine, whose longer
# chain the timing does not hold (benchmark/NOTES.md, session 13).
LINK_TIE = 0.01
# (separate launches' us, [(epilogue tiles, us), ...]) of one projection's shape.
Timing = tuple[float, list[tuple[Config, float]]]


def _epilogue_tiles(proj: nn.Module, x: torch.Tensor, switch: str) -> Config | None:
    """The tiles of `proj`'s epilogue kernel where this call may run it: timed faster at load,
    one row of the shape it was timed on, nothing else sees the call (no hooks), switch on."""
    kernel = getattr(getattr(proj, "method", None), "kernel", None)
    if (
        not isinstance(kernel, DecodeGemv)
        or kernel.epilogue is None
        or proj._forward_hooks
        or proj._forward_pre_hooks
        or os.environ.get(switch) == "0"
        or not kernel.covers(x, proj.weight, proj.kernel_bias())
    ):
        return None
    return kernel.epilogue


def unsplit_gemv(proj: nn.Module) -> Config | None:
    """The tiles of `proj`'s one-row GEMV where it runs one without a K split (which a norm in
    its K loop or a residual add in its epilogue needs); None for cuBLAS or a split."""
    kernel = getattr(getattr(proj, "method", None), "kernel", None)
    if not isinstance(kernel, DecodeGemv) or kernel.config["SPLIT_K"] != 1:
        return None
    return kernel.config


def _input(x: torch.Tensor | NormedInput) -> tuple[torch.Tensor, float | None]:
    """The tensor a GEMV reads, and the eps of the RMSNorm it applies in its K loop, if any
    (the norm's weight is folded into the GEMV's)."""
    if isinstance(x, NormedInput):
        return x.x, x.eps
    return x, None


def gemv_of_call(proj: nn.Module, x: torch.Tensor) -> Config | None:
    """`unsplit_gemv`, where this call is its one-row shape and nothing hooks the projection."""
    config = unsplit_gemv(proj)
    if (
        config is None
        or proj._forward_hooks
        or proj._forward_pre_hooks
        or not proj.method.kernel.covers(x, proj.weight, proj.kernel_bias())
    ):
        return None
    return config


def project_add_residual(proj: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """`proj(x) + residual` rounded as the fused norm's add rounds, in the GEMV's launch: for
    a call `gemv_of_call` accepts (the only ones a producer defers)."""
    config = gemv_of_call(proj, x)
    assert config is not None, "a deferred product runs the unsplit GEMV"
    return dense_gemv(x, proj.weight, proj.kernel_bias(), config, residual=residual)


def project_normed(proj: nn.Module, x: NormedInput) -> torch.Tensor:
    """`proj(RMSNorm(x))`, the norm in the GEMV's K loop where the projection runs one without
    a split (else the norm's own kernel first)."""
    config = gemv_of_call(proj, x.x)
    if config is None:
        return proj(rms_norm(x.x, x.weight, x.eps))
    return dense_gemv(x.x, proj.weight, proj.kernel_bias(), config, rms_eps=x.eps)


def project_rotate_write(
    qkv_proj: nn.Module,
    x: torch.Tensor | NormedInput,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: tuple[torch.Tensor, ...],
    slot_mapping: torch.Tensor,
    heads: tuple[int, int, int],
) -> torch.Tensor | None:
    """q [tokens, heads, dim] of `qkv_proj(x)`, q and k rotated with the tokens' cos/sin rows,
    k and v written to their slots of an unquantized cache; None where this does not apply."""
    x, rms_eps = _input(x)
    tiles = _epilogue_tiles(qkv_proj, x, QKV_SWITCH)
    if tiles is None or len(kv_cache) != 2 or kv_cache[0].dtype != x.dtype:
        return None  # a quantized cache is quantized on write by its own kernel
    x2 = x.reshape(-1, x.shape[-1])
    weight, bias = qkv_proj.weight, qkv_proj.kernel_bias()
    return qkv_rotary_gemv(
        x2,
        weight,
        bias,
        heads,
        cos,
        sin,
        kv_cache[0],
        kv_cache[1],
        slot_mapping,
        tiles,
        rms_eps=rms_eps,
    )


def project_silu_and_mul(
    gate_up_proj: nn.Module, x: torch.Tensor | NormedInput
) -> torch.Tensor | None:
    """silu(gate) * up of `gate_up_proj(x)` ([gate; up] in two equal shards); None where this
    does not apply."""
    x, rms_eps = _input(x)
    tiles = _epilogue_tiles(gate_up_proj, x, GATE_UP_SWITCH)
    if tiles is None:
        return None
    weight, bias = gate_up_proj.weight, gate_up_proj.kernel_bias()
    out = gate_up_silu_gemv(x.reshape(-1, x.shape[-1]), weight, bias, tiles, rms_eps=rms_eps)
    return out.view(*x.shape[:-1], weight.shape[0] // 2)


# -- the choice at load ---------------------------------------------------------------------------
def qkv_heads(proj: nn.Module) -> tuple[int, int, int] | None:
    """(heads, kv_heads, dim) of this rank's q/k/v projection; None for any other linear."""
    sizes, dim = getattr(proj, "local_sizes", None), getattr(proj, "head_dim", None)
    if sizes is None or dim is None:
        return None
    return sizes[0] // dim, sizes[1] // dim, dim


def gate_up_width(proj: nn.Module) -> int | None:
    """inter, for a projection whose outputs are [gate; up] in two shards of that width."""
    shards = list(getattr(proj, "shards", {}).values())
    if len(shards) != 2 or shards[0][1] != shards[1][1] or shards[1][0] != shards[0][1]:
        return None
    return shards[0][1]


def _candidates(n: int, k: int, pair_unit: int) -> list[Config]:
    """The GEMV's one-row tiles without a K split whose row pairs do not straddle a unit."""
    return [
        c
        for c in gemv_candidates(n, k)
        if c["SPLIT_K"] == 1 and pair_unit % (c["BLOCK_N"] // 2) == 0
    ]


def _qkv_scratch(heads: tuple[int, int, int], w0: torch.Tensor):
    """One token's cos and sin rows, a one-block K/V cache (k and v share it) and its slot: what
    a timed q/k/v launch rotates and writes."""
    _, num_kv_heads, dim = heads
    cos = torch.ones(1, dim, device=w0.device)
    sin = torch.zeros(1, dim, device=w0.device)
    cache = torch.zeros(1, 16, num_kv_heads, dim, dtype=w0.dtype, device=w0.device)
    return cos, sin, [cache, cache], torch.zeros(1, dtype=torch.int64, device=w0.device)


def time_qkv_epilogue(heads: tuple[int, int, int], gemv: Config, weights) -> Timing:
    """The GEMV then rotary with the K/V write, against the one launch over its tiles."""
    num_heads, num_kv_heads, dim = heads
    w0 = weights[0][0]
    x = torch.randn(1, w0.shape[1], dtype=w0.dtype, device=w0.device)
    cos, sin, caches, slots = _qkv_scratch(heads, w0)
    sizes = [num_heads * dim, num_kv_heads * dim, num_kv_heads * dim]

    def separate(w, b):
        q, k, v = (t.view(1, -1, dim) for t in dense_gemv(x, w, b, gemv).split(sizes, -1))
        rotary(q, k, cos, sin, inplace=True, kv_write=(v, *caches, slots))

    def fused(w, b, tiles):
        qkv_rotary_gemv(x, w, b, heads, cos, sin, *caches, slots, tiles)

    cold = cold_weights(weights)
    timed = [
        (c, graph_us(lambda w, b, c=c: fused(w, b, c), cold))
        for c in _candidates(w0.shape[0], w0.shape[1], dim // 2)
    ]
    return graph_us(separate, cold), timed


def time_gate_up_epilogue(gemv: Config, weights) -> Timing:
    """The GEMV then SiLU-and-mul, against the one launch over its tiles."""
    w0 = weights[0][0]
    x = torch.randn(1, w0.shape[1], dtype=w0.dtype, device=w0.device)
    cold = cold_weights(weights)
    timed = [
        (c, graph_us(lambda w, b, c=c: gate_up_silu_gemv(x, w, b, c), cold))
        for c in _candidates(w0.shape[0], w0.shape[1], w0.shape[0] // 2)
    ]
    return graph_us(lambda w, b: silu_and_mul(dense_gemv(x, w, b, gemv)), cold), timed


@torch.inference_mode()
def choose_epilogues(
    projections: Sequence[nn.Module],
    time_qkv: Callable[..., Timing] = time_qkv_epilogue,
    time_gate_up: Callable[..., Timing] = time_gate_up_epilogue,
) -> None:
    """For each q/k/v and [gate; up] projection among `projections` whose one-row kernel is the
    unsplit decode GEMV, the epilogue kernel's fastest tiles where they beat the two launches
    (`DecodeGemv.epilogue`); each distinct shape timed once. Every tensor-parallel rank must
    call this with the same projections (rank 0's choice is kept)."""
    groups: dict[tuple, list[nn.Module]] = {}
    for proj in projections:
        if unsplit_gemv(proj) is None:
            continue
        kernel = proj.method.kernel
        heads, inter = qkv_heads(proj), gate_up_width(proj)
        if heads is None and inter is None:
            continue
        key = (GemvShape.of(proj.weight, proj.kernel_bias()), heads, tuple(kernel.config.items()))
        groups.setdefault(key, []).append(proj)
    keys = sorted(groups, key=repr)
    options: list[list[Config]] = []
    choices = [0] * len(keys)
    try:
        for i, key in enumerate(keys):
            members = groups[key]
            heads, gemv = key[1], members[0].method.kernel.config
            weights = [(p.weight, p.kernel_bias()) for p in members]
            if heads is not None:
                separate_us, timed = time_qkv(heads, gemv, weights)
            else:
                separate_us, timed = time_gate_up(gemv, weights)
            options.append([c for c, _ in timed])
            best = min(range(len(timed)), key=lambda j: timed[j][1], default=None)
            if best is not None and timed[best][1] < separate_us:
                choices[i] = best + 1
            logger.info(
                "one-launch %s %s: separate %.1f us, one launch %s -> %s",
                "q/k/v + rotary" if heads is not None else "gate/up + SiLU", key[0],
                separate_us, ", ".join(f"{us:.1f}" for _, us in timed),
                f"one launch {timed[best][0]}" if choices[i] else "separate",
            )  # fmt: skip
    except Exception:  # an optimisation only: a failed timing must not fail the engine
        logger.warning("timing the one-launch epilogues failed: separate launches", exc_info=True)
        choices = [0] * len(keys)
    torch.cuda.empty_cache()
    for key, choice, tiles in zip(keys, broadcast_choices(choices), options, strict=False):
        if choice:  # its own kernel object: linears of one shape share theirs
            kernel = groups[key][0].method.kernel.with_epilogue(tiles[choice - 1])
            for proj in groups[key]:
                proj.method.kernel = kernel


# -- the norm links' choice at load -----------------------------------------------------------------
def _one_row_call(proj: nn.Module) -> Callable[..., object]:
    """`fn(x, w, b, rms_eps)`: the launch a one-row step makes for `proj` with weights (w, b):
    its epilogue kernel where one was chosen (into scratch K/V caches), else its GEMV."""
    kernel = proj.method.kernel
    heads, tiles = qkv_heads(proj), kernel.epilogue
    if tiles is not None and heads is not None:
        cos, sin, caches, slots = _qkv_scratch(heads, proj.weight)
        return lambda x, w, b, eps: qkv_rotary_gemv(
            x, w, b, heads, cos, sin, *caches, slots, tiles, rms_eps=eps
        )
    if tiles is not None:
        return lambda x, w, b, eps: gate_up_silu_gemv(x, w, b, tiles, rms_eps=eps)
    return lambda x, w, b, eps: dense_gemv(x, w, b, kernel.config, rms_eps=eps)


def time_norm_link(
    proj: nn.Module, eps: float, weights, producer: nn.Module | None = None
) -> tuple[float, float]:
    """Microseconds of the chain a one-row step runs for an RMSNorm between `producer` (None:
    no linear before it) and `proj`: the producer's GEMV, the norm's launch with the residual
    add, `proj`'s launch; against the producer's GEMV with the add in its epilogue, then `proj`'s
    launch with the norm in its K loop. CUDA graphs with PDL, `proj`'s weights cold."""
    w0 = weights[0][0]
    hidden, dtype, device = w0.shape[1], w0.dtype, w0.device
    x = torch.randn(1, hidden, dtype=dtype, device=device)
    residual = torch.randn(1, hidden, dtype=dtype, device=device)
    ones = torch.ones(hidden, dtype=dtype, device=device)
    call = _one_row_call(proj)
    if producer is None:
        produced = lambda: x  # noqa: E731
        produced_sum = lambda: x  # noqa: E731
    else:
        wp, bp, config = producer.weight, producer.kernel_bias(), producer.method.kernel.config
        xp = torch.randn(1, wp.shape[1], dtype=dtype, device=device)
        produced = lambda: dense_gemv(xp, wp, bp, config)  # noqa: E731
        produced_sum = lambda: dense_gemv(xp, wp, bp, config, residual=residual)  # noqa: E731

    def separate(w, b):
        call(fused_add_rms_norm(produced(), residual, ones, eps)[0], w, b, None)

    cold = cold_weights(weights)
    return graph_us(separate, cold), graph_us(lambda w, b: call(produced_sum(), w, b, eps), cold)


@torch.inference_mode()
def choose_norm_links(
    readers: Sequence[nn.Module],
    eps: Sequence[float],
    producers: Sequence[nn.Module | None],
    time_link: Callable[..., tuple[float, float]] | None = None,
) -> list[bool]:
    """For each projection reading an RMSNorm (with that norm's `eps`, after `producers`' output)
    and running the unsplit GEMV, whether the one-row chain with the norm in its K loop times
    no slower than the norm's own launch (`time_norm_link`, within `LINK_TIE`); each distinct
    chain timed once. tp=1 only (no choice is broadcast)."""
    time_link = time_link or time_norm_link
    groups: dict[tuple, list[int]] = {}
    for i, (proj, e, producer) in enumerate(zip(readers, eps, producers, strict=True)):
        kernel = proj.method.kernel
        before = None if producer is None else (
            GemvShape.of(producer.weight, producer.kernel_bias()),
            tuple(producer.method.kernel.config.items()),
        )  # fmt: skip
        key = (
            GemvShape.of(proj.weight, proj.kernel_bias()), qkv_heads(proj), e,
            tuple(kernel.config.items()), tuple((kernel.epilogue or {}).items()), before,
        )  # fmt: skip
        groups.setdefault(key, []).append(i)
    linked = [False] * len(readers)
    try:
        for key, members in sorted(groups.items(), key=lambda item: repr(item[0])):
            first = members[0]
            weights = [(readers[i].weight, readers[i].kernel_bias()) for i in members]
            separate_us, fused_us = time_link(readers[first], key[2], weights, producers[first])
            link = fused_us <= separate_us * (1 + LINK_TIE)
            for i in members:
                linked[i] = link
            logger.info(
                "one-row norm in the GEMV %s after %s: norm launched %.1f us, in the K loop "
                "%.1f -> %s", key[0], key[-1], separate_us, fused_us,
                "linked" if link else "separate",
            )  # fmt: skip
    except Exception:  # an optimisation only: a failed timing must not fail the engine
        logger.warning("timing the norm links failed: norms run alone", exc_info=True)
        linked = [False] * len(readers)
    torch.cuda.empty_cache()
    return linked
