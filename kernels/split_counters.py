"""Ticket counters for split kernels whose last program combines the splits (one launch).

Each program of a split group adds 1 to its group's counter after writing its partial; the one
that draws the last ticket combines and sets the counter back to 0, so a buffer stays zero
between launches and is allocated once, outside any CUDA graph capture.
"""

from __future__ import annotations

import torch
import triton

# Zeroed int32 counters a device, one a split group (paged decode attention: a (seq, kv head)).
# A buffer that grows is kept alive: a CUDA graph captured earlier still uses it.
_counters: dict[torch.device, list[torch.Tensor]] = {}
MIN_COUNTERS = 1024


def ticket_counters(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` zeroed counters on `device`. Growing allocates, which a CUDA graph
    capture cannot do: the engine's warm-up runs each batch size eagerly before capturing."""
    buffers = _counters.setdefault(device, [])
    if buffers and buffers[-1].numel() >= count:
        return buffers[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            f"a split launch needs {count} ticket counters while a CUDA graph is being "
            "captured; run the same batch once outside the capture first (a warm-up) so that "
            "they are allocated before it"
        )
    size = max(MIN_COUNTERS, triton.next_power_of_2(count))
    buffers.append(torch.zeros(size, dtype=torch.int32, device=device))
    return buffers[-1]
