"""Programmatic dependent launch (PDL) for the batch-1 decode chain: on by default on Hopper and
later, `LMDEPLOY_PDL=0` turns it off.

On Hopper and later a kernel launched with `launch_pdl=True` may start while its predecessor in
the stream is still running: its programs run their prologue (and may load data no kernel of
the step writes, such as weights), then block in `griddepcontrol.wait` until the predecessor
grid has completed and its writes are visible. The contract every kernel with a `PDL`
constexpr keeps:

- before `pdl_wait_then_release`: only loads of data nothing in the step writes (weights, norm
  weights), and no store at all (a CUDA graph's pool reuses buffers, so a predecessor may still
  be reading what this kernel would overwrite);
- `pdl_wait_then_release` lets this kernel's own dependent launch right after the wait: the
  dependent waits for this grid's completion in turn, so nothing it does after its own wait can
  race, and its pre-wait part (weights only) starts no earlier than after our predecessor ended.

A kernel launched without PDL (cuBLAS, torch ops) is a full barrier on either side. On an H200
it saved ~0.8-0.9 us a kernel pair at batch 1 (Mistral-7B 237.3 -> 252.3 tok/s, Llama-3-8B
226.1 -> 235.6: benchmark/NOTES.md, session 8).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def _is_hopper_or_later(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 9


@functools.cache
def _triton_has_pdl() -> bool:
    """Triton 3.3 and later: `gdc_wait` / `gdc_launch_dependents` and the `launch_pdl` option."""
    cuda = getattr(getattr(tl, "extra", None), "cuda", None)
    return hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")


def pdl_enabled(device: torch.device) -> bool:
    """Whether launches on `device` use PDL: a CUDA device of compute capability 9.0 or later,
    a Triton that has it, not Triton's interpreter (which has no griddepcontrol), and not
    `LMDEPLOY_PDL=0`."""
    if os.environ.get("LMDEPLOY_PDL") == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return device.type == "cuda" and _triton_has_pdl() and _is_hopper_or_later(device)


def pdl_launch_options(enabled: bool) -> dict[str, bool]:
    """The launch keywords: none when off, so a launch without PDL is the one it always was."""
    return {"launch_pdl": True} if enabled else {}


@triton.jit
def pdl_wait_then_release(PDL: tl.constexpr):
    """Block until the predecessor grid has completed (its writes visible), then let the
    dependent grid launch. Without PDL: nothing."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Block until the predecessor grid has completed, without releasing the dependent grid:
    for a kernel of several waves, whose dependents would take SM slots its later programs
    need (released at its exit, or by `pdl_release` after its main loop)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
