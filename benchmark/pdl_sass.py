"""Offline check of programmatic dependent launch in the batch-1 decode chain's kernels
(lmdeploy_kernels/pdl.py), compiled with `PDL=True` for an H200 (sm_90a) by the installed Triton, no GPU
needed:

    python benchmark/pdl_sass.py

For each kernel, at a Llama-3-8B decode shape (the MoE block's at Qwen3-30B-A3B's, one token):
whether the PTX holds `griddepcontrol.wait` and
`griddepcontrol.launch_dependents`, how many global loads (PTX `ld.global`, SASS `LDG`) come
before the wait, and how many stores (`st.global`, `STG`, atomics) do (must be 0). Expected:
the norm weight's loads before the wait in rms_norm, the first weight tile's in dense_gemv and
in the W4A16 GEMV (at the engine's launch for each of Llama-3-8B's four linears: the tile
choice of `_config`, which differs only in its split), none elsewhere (the MoE routing and
token sum read only step data; the grouped GEMM between them launches without PDL).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # w4a16_sass's helpers; lmdeploy_kernels/

from w4a16_sass import POINTERS as W4A16_POINTERS  # noqa: E402
from w4a16_sass import UNIT_STRIDES as W4A16_UNIT_STRIDES  # noqa: E402
from w4a16_sass import compile_sm90  # noqa: E402

BF16 = "*bf16"
# Llama-3-8B's linears at tp=1 as (N, K): qkv, o, gate_up, down.
LLAMA3_8B_LINEARS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096),
                     "down": (4096, 14336)}  # fmt: skip
AWQ_GROUP = 128


def _w4a16_gemv_variants() -> list[tuple[tuple, int]]:
    """The W4A16 GEMV as the engine launches it at one row on each of the 8B's linears, with
    the bytes of its first code tile a thread loads ([BLOCK_K / 8, BLOCK_N] int32 over the
    threads): what must be in flight before the wait, and nothing else."""
    from lmdeploy_kernels.w4a16_gemm import _config, _w4a16_gemv_kernel

    variants = []
    for name, (n, k) in LLAMA3_8B_LINEARS.items():
        cfg = _config(1, n, k, AWQ_GROUP)
        warps = cfg.pop("num_warps")
        tile_bytes = cfg["BLOCK_K"] // 8 * cfg["BLOCK_N"] * 4 // (32 * warps)
        consts = cfg | {"GROUP_SIZE": AWQ_GROUP, "HAS_BIAS": False}
        variant = (f"w4a16_gemv {name} (split {cfg['SPLIT_K']})", _w4a16_gemv_kernel,
                   W4A16_POINTERS, consts, W4A16_UNIT_STRIDES, warps)  # fmt: skip
        variants.append((variant, tile_bytes))
    return variants


def _variants() -> list[tuple]:
    """(name, kernel, pointer and float types, constexprs, unit strides, warps[, stages]) a
    kernel."""
    from lmdeploy_kernels.decode_split_combine import _paged_decode_reduce_kernel
    from lmdeploy_kernels.dense_gemv import _dense_gemv_kernel
    from lmdeploy_kernels.paged_decode_attention import _paged_decode_kernel
    from lmdeploy_kernels.qkv_rotary_gemv import _qkv_rotary_gemv_kernel
    from lmdeploy_kernels.rms_norm import _rms_norm_kernel
    from lmdeploy_kernels.rotary import _rotary_kernel
    from lmdeploy_kernels.silu_and_mul import _silu_and_mul_kernel

    norm = dict.fromkeys(
        ["x_ptr", "residual_ptr", "weight_ptr", "out_ptr", "new_residual_ptr"], BF16
    )
    gemv = dict.fromkeys(["x_ptr", "w_ptr", "bias_ptr", "out_ptr"], BF16)
    gemv |= {"partial_ptr": "*fp32", "counter_ptr": "*i32"}
    rotary = dict.fromkeys(["q_ptr", "k_ptr", "q_out_ptr", "k_out_ptr", "v_ptr"], BF16)
    rotary |= dict.fromkeys(["k_cache_ptr", "v_cache_ptr"], BF16)
    rotary |= dict.fromkeys(["cos_ptr", "sin_ptr", "q_norm_ptr", "k_norm_ptr"], "*fp32")
    rotary |= {"positions_ptr": "*i64", "slot_ptr": "*i64", "eps": "fp32"}
    qkv_rotary = dict.fromkeys(["x_ptr", "w_ptr", "bias_ptr", "q_ptr"], BF16)
    qkv_rotary |= dict.fromkeys(["k_cache_ptr", "v_cache_ptr"], BF16)
    qkv_rotary |= {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "slot_ptr": "*i64"}
    attn = dict.fromkeys(["q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr"], BF16)
    attn |= dict.fromkeys(["k_sz_ptr", "v_sz_ptr"], BF16)
    attn |= {"block_tables_ptr": "*i32", "context_lens_ptr": "*i32", "counter_ptr": "*i32"}
    attn |= dict.fromkeys(["part_out_ptr", "part_lse_ptr"], "*fp32")
    attn |= dict.fromkeys(["qk_scale", "softcap_log2"], "fp32")
    attn_consts = dict(
        GROUP=4, BLOCK_SIZE=64, NUM_SPLITS=16, BLOCK_H=16, BLOCK_N=64, BLOCK_D=128,
        BLOCK_C=64, DOT_PRECISION="tf32", SLIDING=False, SOFTCAP=False, QUANT_BITS=0,
        COMBINE=False, BLOCK_G=4, BLOCK_S=16,
    )  # fmt: skip
    attn_units = ("stride_qd", "stride_kd", "stride_vd", "stride_sd", "stride_btb", "stride_od")
    reduce = {"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "out_ptr": BF16}
    return [
        ("rms_norm + residual", _rms_norm_kernel, norm | {"eps": "fp32"},
         dict(ADD_RESIDUAL=True, BLOCK=4096), (), 16),
        ("dense_gemv (split-K)", _dense_gemv_kernel, gemv,
         dict(HAS_BIAS=False, EVEN_K=True, BLOCK_M=1, BLOCK_N=4, BLOCK_K=1024, SPLIT_K=4),
         ("stride_xk", "stride_wk", "stride_on"), 4),
        ("silu_and_mul", _silu_and_mul_kernel, {"x_ptr": BF16, "out_ptr": BF16},
         dict(BLOCK=1024), ("stride_xd", "stride_od"), 4),
        ("rotary + kv write", _rotary_kernel, rotary,
         dict(HAS_POSITIONS=True, HAS_NORM=False, WRITE_KV=True, BLOCK_HQ=32, BLOCK_HK=8,
              BLOCK_D=64), (), 4),
        ("qkv gemv + rotary + kv write", _qkv_rotary_gemv_kernel, qkv_rotary,
         dict(HEAD_DIM=128, HAS_BIAS=True, EVEN_K=True, BLOCK_M=1, BLOCK_N=4, BLOCK_K=1024),
         ("stride_xk", "stride_wk"), 4),
        ("paged_decode (stage 1)", _paged_decode_kernel, attn, attn_consts, attn_units, 4),
        ("paged_decode reduce", _paged_decode_reduce_kernel, reduce,
         dict(NUM_SPLITS=16, BLOCK_S=16, BLOCK_D=128), ("stride_od",), 4),
    ] + _moe_variants()  # fmt: skip


def _moe_variants() -> list[tuple]:
    """The MoE decode block's PDL kernels at Qwen3-30B-A3B's one token: 128 experts, top 8,
    hidden 2048, with `fused_moe_routed`'s launch sizes."""
    from lmdeploy_kernels.moe_routing import _route_align_kernel
    from lmdeploy_kernels.moe_sum import _moe_sum_kernel

    route = {"logits_ptr": BF16, "weights_ptr": "*fp32", "ids_ptr": "*i32"}
    route |= dict.fromkeys(["sorted_ids_ptr", "expert_ids_ptr", "num_padded_ptr"], "*i32")
    route_consts = dict(
        TOP_K=8, RENORMALIZE=True, BLOCK_M=16, BLOCK_E=128, CHUNK_T=1, CHUNK_P=8
    )  # fmt: skip
    return [
        ("moe route + align (1 warp)", _route_align_kernel, route, route_consts,
         ("stride_le",), 1),
        ("moe token sum", _moe_sum_kernel, {"x_ptr": BF16, "out_ptr": BF16},
         dict(TOP_K=8, BLOCK_J=8, BLOCK_H=512), (), 2),
    ]  # fmt: skip


def _before(lines: list[str], marker: str, pattern: str) -> int | None:
    """How many lines matching `pattern` come before the first line holding `marker`."""
    at = next((i for i, line in enumerate(lines) if marker in line), None)
    if at is None:
        return None
    return sum(1 for line in lines[:at] if re.search(pattern, line))


def check(name, kernel, types, constants, unit_strides, warps, stages=None) -> dict:
    compiled = compile_sm90(
        kernel, constants | {"PDL": True}, warps, types, unit_strides, stages, launch_pdl=True
    )
    ptx = compiled.asm["ptx"].splitlines()
    sass = compiled.asm["sass"].splitlines()
    # griddepcontrol.wait is ACQBULK in SASS, launch_dependents is PREEXIT.
    return {
        "kernel": name,
        "ptx_wait": any("griddepcontrol.wait" in x for x in ptx),
        "ptx_launch_dependents": any("griddepcontrol.launch_dependents" in x for x in ptx),
        "ptx_loads_before_wait": _before(ptx, "griddepcontrol.wait", r"\bld\.global"),
        "ptx_stores_before_wait": _before(ptx, "griddepcontrol.wait", r"\b(st|atom|red)\.global"),
        "sass_wait": any("ACQBULK" in x for x in sass),
        "sass_launch_dependents": any("PREEXIT" in x for x in sass),
        "sass_loads_before_wait": _before(sass, "ACQBULK", r"\bLDG"),
        "sass_stores_before_wait": _before(sass, "ACQBULK", r"\b(STG|ATOMG|REDG|RED)\b"),
        "sass_bytes_loaded_before_wait": _bytes_loaded_before(sass, "ACQBULK"),
    }


def _bytes_loaded_before(sass: list[str], marker: str) -> int | None:
    """A thread's bytes of global loads (by each LDG's width suffix) before `marker`."""
    at = next((i for i, line in enumerate(sass) if marker in line), None)
    if at is None:
        return None
    widths = (re.search(r"\bLDG\S*?(?:\.(128|64|U16|S16|U8|S8))?\s", line) for line in sass[:at])
    sizes = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1, None: 4}
    return sum(sizes[w.group(1)] for w in widths if w)


def main() -> None:
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    for variant in _variants():
        print(check(*variant), flush=True)
    for variant, tile_bytes in _w4a16_gemv_variants():
        print(check(*variant) | {"first_code_tile_bytes": tile_bytes}, flush=True)


if __name__ == "__main__":
    main()
