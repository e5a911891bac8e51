"""M-RoPE positions (Qwen2-VL, Qwen2.5-VL) of a sequence's tokens, from its images' grids.

transformers' `get_rope_index`: text tokens take one position thrice, counting on from the
previous token; an image of (t, h, w) merged patches at text position `s` takes
(s + ti, s + hi, s + wi) for its patch (ti, hi, wi) in row-major order, and the text after it
resumes at s + max(h, w). Each image thus shifts the positions after it by
max(h, w) - t*h*w (its rope delta); decode tokens sit at their index plus the sum of the
deltas, one table row each, which is what CUDA graphs read (decode_inputs.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .....domain.sequence import ImageSpan


def _grid_delta(grid: tuple[int, ...]) -> int:
    t, h, w = grid
    return max(h, w) - t * h * w


def rope_delta(images: Sequence[ImageSpan]) -> int:
    """How far the positions after all of `images` are shifted from their indices."""
    return sum(_grid_delta(span.grid) for span in images if span.grid is not None)


def has_grids(images: Sequence[ImageSpan]) -> bool:
    return any(span.grid is not None for span in images)


def mrope_positions(images: Sequence[ImageSpan], start: int, end: int) -> np.ndarray:
    """Positions [3, end - start] (int64) of tokens start..end-1 of a sequence whose images
    are `images` (in prompt order)."""
    index = np.arange(start, end, dtype=np.int64)
    grids = [span for span in images if span.grid is not None]
    shift = np.zeros_like(index)
    for span in grids:  # text after an image: shifted by its delta
        shift += np.where(index >= span.end, _grid_delta(span.grid), 0)
    out = np.repeat((index + shift)[None, :], 3, axis=0)
    before = 0  # the shift of the text just before the image
    for span in grids:
        inside = (index >= span.offset) & (index < span.end)
        if inside.any():
            t, h, w = span.grid
            k = index[inside] - span.offset  # the patch's place in the image's row-major grid
            base = span.offset + before
            out[0, inside] = base + k // (h * w)
            out[1, inside] = base + (k // w) % h
            out[2, inside] = base + k % w
        before += _grid_delta(span.grid)
    return out
