"""Rotary position embedding (rotate-half convention, as HF Llama): the cos/sin tables (Llama 3,
linear and dynamic NTK scaling) and the one dispatch of the rotation to a backend (`rotate_qk`).

Dynamic NTK (HF `rope_type: dynamic`, or TurboMind's `rope_scaling_factor`) raises the base
once a sequence outgrows `max_position_embeddings` (M): at length L > M the base is
`theta * (factor * L / M - (factor - 1)) ** (dim / (dim - 2))`. transformers recomputes it in
every forward from `max(position_ids) + 1`, i.e. from the longest sequence of its batch; the
keys already in its KV cache keep the rotation of the step that computed them. Our paged
engine takes L per sequence, at each step: the sequence's length once this step's tokens are
in (a whole prompt at prefill, `position + 1` at decode). At batch 1 that is exactly what
transformers does; in a batch, a sequence's numbers do not depend on who shares its step
(transformers' do). A chunked prefill uses the length at the end of each chunk, as
transformers would if fed the same chunks, and a reused prefix keeps the rotation it was
cached with.

M-RoPE (Qwen2-VL, `mrope_section`): each token has three positions (temporal, height,
width; the same three for text), and each section of the rotary frequencies turns by one of
them, section i by position i % 3. A token's cos/sin row is therefore pieced together from the
rows of its three positions in the same table (`RotaryTables.mrope`). Text after an image sits
at its index plus the sequence's rope delta (runner/mrope.py), so a decode step still reads
one table row per token.

Since a decode token's length is its position + 1, the decode table is still indexed by
position alone (row p rotated with the base of length max(p + 1, M)), so CUDA graphs read it
as before; only a prefill step past M builds its own cos/sin per token (`RotaryTables.at`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from ..backends.cpu import ops as cpu_ops
from ..backends.torch_native.ops import apply_rotary

if TYPE_CHECKING:
    from .norm import RMSNorm


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = scaling["factor"]
    low = scaling.get("low_freq_factor", 1.0)
    high = scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(is_mid, mid, scaled)


def _rope_kind(scaling: dict[str, Any] | None) -> str | None:
    return (scaling or {}).get("rope_type", (scaling or {}).get("type"))


def _inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def dynamic_ntk_inv_freq(
    head_dim: int, theta: float, factor: float, max_trained: int, seq_lens: torch.Tensor
) -> torch.Tensor:
    """Inverse frequencies [n, head_dim / 2] (float64) for sequences of lengths `seq_lens` [n]:
    transformers' `_compute_dynamic_ntk_parameters`, the base unchanged up to `max_trained`."""
    lens = seq_lens.to(torch.float64).clamp_min(max_trained)
    base = theta * (factor * lens / max_trained - (factor - 1)) ** (head_dim / (head_dim - 2))
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64, device=lens.device) / head_dim
    return 1.0 / base[:, None] ** exponent[None, :]


def _cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().float(), emb.sin().float()


def rotary_cos_sin(
    head_dim: int,
    max_positions: int,
    theta: float,
    scaling: dict[str, Any] | None,
    device: torch.device,
    max_trained: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [max_positions, head_dim], float32. With dynamic NTK, row
    p is rotated with the base of a sequence of p + 1 tokens (the decode step that computes
    position p), `max_trained` being the model's `max_position_embeddings`."""
    kind = _rope_kind(scaling)
    positions = torch.arange(max_positions, dtype=torch.float64)
    if kind == "dynamic":
        assert max_trained is not None, "dynamic NTK needs max_position_embeddings"
        inv_freq = dynamic_ntk_inv_freq(
            head_dim, theta, scaling["factor"], max_trained, positions + 1
        )
        cos, sin = _cos_sin(positions[:, None] * inv_freq)
        return cos.to(device), sin.to(device)
    inv_freq = _inv_freq(head_dim, theta)
    if kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind is not None:
        raise NotImplementedError(
            f"rope_scaling type {kind!r} (config.json) is not supported yet; supported: "
            f"linear, dynamic, llama3. Use a variant of the model without it (for Phi-3, a "
            f"4k-context checkpoint rather than a 128k 'longrope' one)"
        )
    cos, sin = _cos_sin(torch.outer(positions, inv_freq))
    return cos.to(device), sin.to(device)


class RotaryTables:
    """The model's cos/sin by position, and per token where the rotation depends on length."""

    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        theta: float,
        scaling: dict[str, Any] | None,
        max_trained: int,
        device: torch.device,
        mrope_section: tuple[int, ...] | None = None,
    ) -> None:
        self.head_dim, self.theta, self.max_trained = head_dim, theta, max_trained
        self.dynamic_factor = scaling["factor"] if _rope_kind(scaling) == "dynamic" else None
        self.cos, self.sin = rotary_cos_sin(
            head_dim, max_positions, theta, scaling, device, max_trained
        )
        self.mrope_section = mrope_section
        self._axis: torch.Tensor | None = None
        if mrope_section is not None:
            if 2 * sum(mrope_section) != head_dim:
                raise ValueError(
                    f"mrope_section {list(mrope_section)} covers {2 * sum(mrope_section)} of "
                    f"the head's {head_dim} rotary dims (config.json); the checkpoint's config "
                    f"is inconsistent"
                )
            # Which of the three positions turns each dim (both halves of the rotate-half pair).
            half = torch.cat(
                [torch.full((n,), i % 3, dtype=torch.int64) for i, n in enumerate(mrope_section)]
            )
            self._axis = torch.cat([half, half]).to(device)

    def needs_lengths(self, context_lens: list[int], is_decode: bool) -> bool:
        """Whether this step's cos/sin differ from the table: a prefill past M under dynamic NTK."""
        return (
            self.dynamic_factor is not None
            and not is_decode
            and max(context_lens) > self.max_trained
        )

    def at(
        self, positions: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [tokens, head_dim] of tokens at `positions` in sequences of `seq_lens`."""
        if self.dynamic_factor is None:
            return self.cos[positions], self.sin[positions]
        inv_freq = dynamic_ntk_inv_freq(
            self.head_dim, self.theta, self.dynamic_factor, self.max_trained, seq_lens
        )
        return _cos_sin(positions.to(torch.float64)[:, None] * inv_freq)

    def mrope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [tokens, head_dim] of tokens at M-RoPE `positions` [3, tokens]."""
        assert self._axis is not None, "3-D positions for a model without mrope_section"
        tokens = torch.arange(positions.shape[1], device=positions.device)[:, None]
        axis = self._axis[None, :]
        dims = torch.arange(self.head_dim, device=positions.device)[None, :]
        rows = positions[axis, tokens]  # [tokens, head_dim]: each dim's own position
        return self.cos[rows, dims], self.sin[rows, dims]


def rotate_qk(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: tuple[int, int, int],
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    slot_mapping: torch.Tensor,
    qk_norm: tuple[RMSNorm, RMSNorm] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """q, k, v heads of qkv [tokens, (heads + 2 kv_heads) x head_dim], q and k rotated, for
    `heads` = (num_heads, num_kv_heads, head_dim); with `qk_norm`, each q and k head goes
    through its norm first (on CUDA in the rotary kernel's pass). Where the cache is stored
    unquantized, the CUDA kernel and the CPU's C kernel (float32) also write k and v to their
    cache slots as they go (the flag: already written)."""
    if qkv.is_cuda:
        return rotate_qk_triton(qkv, cos, sin, heads, kv_cache, slot_mapping, qk_norm)
    num_heads, num_kv_heads, head_dim = heads
    sizes = _head_sizes(heads)
    if qk_norm is not None:
        _normalize_heads(qkv, sizes, head_dim, qk_norm)
    if cpu_ops.available(qkv) and cpu_ops.rotary_write_kv(
        qkv, cos, sin, *kv_cache, slot_mapping, *heads
    ):
        # Split as heads: one view and one split (two aten ops fewer than views of a split).
        q, k, v = qkv.view(qkv.shape[0], -1, head_dim).split(
            [num_heads, num_kv_heads, num_kv_heads], dim=1
        )
        return q, k, v, True
    qk, v = qkv.split([sizes[0] + sizes[1], sizes[2]], dim=-1)
    # One rotary pass over the query and key heads together.
    qk = apply_rotary(qk.view(-1, num_heads + num_kv_heads, head_dim), cos, sin)
    q, k = qk.split([num_heads, num_kv_heads], dim=1)
    return q, k, v.view(-1, num_kv_heads, head_dim), False


def rotate_qk_triton(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: tuple[int, int, int],
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    slot_mapping: torch.Tensor,
    qk_norm: tuple[RMSNorm, RMSNorm] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """`rotate_qk` through the Triton kernel (CUDA's path; any device under TRITON_INTERPRET):
    q/k norms, rotation and, for an unquantized cache, the K/V write in one launch."""
    from ..backends.cuda.ops import rotary_qk  # Triton: imported only where it runs

    head_dim = heads[2]
    q, k, v = (x.view(qkv.shape[0], -1, head_dim) for x in qkv.split(_head_sizes(heads), dim=-1))
    norms = None
    if qk_norm is not None:
        q_norm, k_norm = qk_norm
        norms = (q_norm.weight, k_norm.weight, q_norm.eps)
    k_cache, v_cache = kv_cache
    writes = k_cache.dtype == qkv.dtype  # a quantized cache is written by its own kernel
    rotary_qk(q, k, cos, sin, norms, (v, k_cache, v_cache, slot_mapping) if writes else None)
    return q, k, v, writes


def _head_sizes(heads: tuple[int, int, int]) -> list[int]:
    """Widths of the q, k and v parts of a qkv row."""
    num_heads, num_kv_heads, head_dim = heads
    return [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]


def _normalize_heads(
    qkv: torch.Tensor, sizes: list[int], head_dim: int, qk_norm: tuple[RMSNorm, RMSNorm]
) -> None:
    """Each query and key head of qkv through its norm, written back in place."""
    tokens = qkv.shape[0]
    q, k, _ = qkv.split(sizes, dim=-1)
    for part, norm in zip((q, k), qk_norm, strict=True):
        part.copy_(norm(part.reshape(-1, head_dim)).view(tokens, -1))
