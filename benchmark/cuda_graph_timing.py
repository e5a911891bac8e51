"""Per-call GPU time of a small function, captured ten times in a CUDA graph and replayed: the
host's launch cost hidden, as in the engine's decode graphs."""

from __future__ import annotations

from collections.abc import Callable

import torch


def graph_ms(fn: Callable[[], object], replays: int = 200) -> float:
    """Milliseconds a call of `fn`, from `replays` replays of a graph of ten calls."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        for _ in range(10):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / 10
