"""Programmatic dependent launch (lmdeploy_kernels/pdl.py): when it is on, and on a Hopper GPU that a
decode-chain of PDL kernels replayed in a CUDA graph computes exactly what it computes without
PDL (a load before its predecessor's writes, or a store over what the predecessor still reads,
would show as a difference in some replay)."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels import pdl
from lmdeploy.kernels.dense_gemv import dense_gemv
from lmdeploy.kernels.fused_moe import fused_moe_routed
from lmdeploy.kernels.rms_norm import fused_add_rms_norm
from lmdeploy.kernels.silu_and_mul import silu_and_mul
from lmdeploy.kernels.w4a16_gemm import _config, pack_int4_rows, w4a16_gemm

from ._util import ON_CUDA


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device that reports compute capability 9 or later, whatever this host has."""
    monkeypatch.setattr(pdl, "_is_hopper_or_later", lambda device: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device("cuda")


def test_pdl_is_on_by_default_and_off_with_the_flag(hopper, monkeypatch):
    monkeypatch.delenv("LMDEPLOY_PDL", raising=False)
    assert pdl.pdl_enabled(hopper)
    monkeypatch.setenv("LMDEPLOY_PDL", "0")
    assert not pdl.pdl_enabled(hopper)
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    assert pdl.pdl_enabled(hopper)


def test_pdl_is_off_under_the_interpreter_and_off_cuda(hopper, monkeypatch):
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    assert not pdl.pdl_enabled(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.pdl_enabled(hopper)


def test_pdl_is_off_with_a_triton_that_lacks_it(hopper, monkeypatch):
    monkeypatch.delenv("LMDEPLOY_PDL", raising=False)
    monkeypatch.setattr(pdl, "_triton_has_pdl", lambda: False)
    assert not pdl.pdl_enabled(hopper)


def test_this_triton_has_pdl():  # pyproject's floor is older: the check above must not lie here
    assert pdl._triton_has_pdl()


def test_launch_options_are_empty_when_off():
    assert pdl.pdl_launch_options(False) == {}
    assert pdl.pdl_launch_options(True) == {"launch_pdl": True}


def _layers(hidden: int, inter: int, num_layers: int) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device="cuda") * scale).bfloat16()

    return [
        (rand(hidden, scale=1.0), rand(2 * inter, hidden, scale=0.02), rand(hidden, inter, scale=0.02))
        for _ in range(num_layers)
    ]  # fmt: skip


def _mlp_chain(x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Per layer: add + RMSNorm -> gate/up GEMV -> SwiGLU -> down GEMV, all Triton kernels."""
    residual = torch.zeros_like(x)
    for norm_w, gate_up_w, down_w in layers:
        h, residual = fused_add_rms_norm(x, residual, norm_w, 1e-5)
        x = dense_gemv(silu_and_mul(dense_gemv(h, gate_up_w)), down_w)
    return x + residual


def _replays_with_pdl_match_eager_without(monkeypatch, chain, hidden: int) -> None:
    """`chain` of one bf16 row, eager without PDL, then captured in a CUDA graph with PDL and
    replayed 200 times over 4 inputs in turn: every replay must equal the eager result."""
    monkeypatch.setenv("LMDEPLOY_PDL", "0")
    inputs = [torch.randn(1, hidden, device="cuda").bfloat16() for _ in range(4)]
    expected = [chain(x) for x in inputs]
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    if not pdl.pdl_enabled(torch.device("cuda")):
        pytest.skip("PDL needs compute capability 9.0 or later")
    static_x = inputs[0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compiles the PDL variants outside the capture
        assert torch.equal(chain(static_x), expected[0])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = chain(static_x)
    for replay in range(200):
        which = replay % len(inputs)
        static_x.copy_(inputs[which])
        graph.replay()
        assert torch.equal(static_out, expected[which]), f"replay {replay} differs"


@pytest.mark.skipif(not ON_CUDA, reason="PDL needs a CUDA device")
def test_mlp_chain_in_a_graph_with_pdl_matches_eager_without(monkeypatch):
    layers = _layers(hidden=2048, inter=5632, num_layers=8)
    _replays_with_pdl_match_eager_without(monkeypatch, lambda x: _mlp_chain(x, layers), 2048)


W4A16_GROUP = 128


def _w4a16_weight(k: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random 4-bit codes in the kernel's layout, scales and zero points for y = x W [K, N]."""
    codes = torch.randint(0, 16, (k, n), generator=gen, device="cuda")
    groups = k // W4A16_GROUP
    scales = (torch.rand(groups, n, generator=gen, device="cuda") * 0.004 + 0.001).bfloat16()
    zeros = torch.randint(0, 16, (groups, n), generator=gen, device="cuda").bfloat16()
    return pack_int4_rows(codes), scales, zeros


def _w4a16_mlp_chain(x: torch.Tensor, layers: list[tuple], configs: list[dict | None]):
    """The AWQ batch-1 MLP per layer: add + RMSNorm -> gate/up W4A16 GEMV -> SwiGLU -> down
    W4A16 GEMV, each layer's GEMVs under its config (None: the engine's, K split)."""
    residual = torch.zeros_like(x)
    for (norm_w, gate_up, down), config in zip(layers, configs, strict=True):
        h, residual = fused_add_rms_norm(x, residual, norm_w, 1e-5)
        h = silu_and_mul(w4a16_gemm(h, *gate_up, W4A16_GROUP, config))
        x = w4a16_gemm(h, *down, W4A16_GROUP, config)
    return x + residual


@pytest.mark.skipif(not ON_CUDA, reason="PDL needs a CUDA device")
def test_w4a16_mlp_chain_in_a_graph_with_pdl_matches_eager_without(monkeypatch):
    """The W4A16 GEMV with and without its split-K (the partials, the last program's sum and
    the counters it resets are what a premature load or store would corrupt)."""
    hidden, inter, num_layers = 2048, 5632, 8
    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = [
        (
            (torch.randn(hidden, generator=gen, device="cuda")).bfloat16(),
            _w4a16_weight(hidden, 2 * inter, gen),
            _w4a16_weight(inter, hidden, gen),
        )
        for _ in range(num_layers)
    ]
    whole_k = _config(1, hidden, inter, W4A16_GROUP) | {"SPLIT_K": 1}
    assert _config(1, hidden, inter, W4A16_GROUP)["SPLIT_K"] > 1, "the engine's config splits"
    configs = [None if layer % 2 else whole_k for layer in range(num_layers)]
    _replays_with_pdl_match_eager_without(
        monkeypatch, lambda x: _w4a16_mlp_chain(x, layers, configs), hidden
    )


def _moe_layers(hidden: int, inter: int, num_experts: int, num_layers: int):
    gen = torch.Generator(device="cuda").manual_seed(1)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device="cuda") * scale).bfloat16()

    return [
        (rand(hidden, scale=1.0), rand(num_experts, hidden, scale=hidden**-0.5),
         rand(num_experts, 2 * inter, hidden, scale=hidden**-0.5),
         rand(num_experts, hidden, inter, scale=inter**-0.5))
        for _ in range(num_layers)
    ]  # fmt: skip


def _moe_chain(x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Per layer, Qwen3-MoE's MLP at one token: add + RMSNorm -> router GEMV -> route+align ->
    w13 grouped GEMM (SwiGLU) -> w2 grouped GEMM -> token sum, all Triton kernels."""
    residual = torch.zeros_like(x)
    for norm_w, router_w, w13, w2 in layers:
        h, residual = fused_add_rms_norm(x, residual, norm_w, 1e-6)
        x = fused_moe_routed(h, dense_gemv(h, router_w), w13, w2, top_k=8, renormalize=True)
    return x + residual


@pytest.mark.skipif(not ON_CUDA, reason="PDL needs a CUDA device")
def test_moe_block_in_a_graph_with_pdl_matches_eager_without(monkeypatch):
    # Qwen3-30B-A3B's routing (128 experts, top 8: the one-warp route+align and the decode
    # tiles), narrower experts so that 8 layers stay small.
    layers = _moe_layers(hidden=1024, inter=256, num_experts=128, num_layers=8)
    _replays_with_pdl_match_eager_without(monkeypatch, lambda x: _moe_chain(x, layers), 1024)
