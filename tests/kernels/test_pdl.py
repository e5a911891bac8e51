"""Programmatic dependent launch (kernels/pdl.py): when it is on, and on a Hopper GPU that a
decode-chain of PDL kernels replayed in a CUDA graph computes exactly what it computes without
PDL (a load before its predecessor's writes, or a store over what the predecessor still reads,
would show as a difference in some replay): the dense MLP chain, and the MoE block's."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels import pdl
from lmdeploy.kernels.dense_gemv import dense_gemv
from lmdeploy.kernels.fused_moe import fused_moe_routed
from lmdeploy.kernels.rms_norm import fused_add_rms_norm
from lmdeploy.kernels.silu_and_mul import silu_and_mul

from ._util import ON_CUDA


@pytest.fixture
def hopper(monkeypatch):
    """A CUDA device that reports compute capability 9 or later, whatever this host has."""
    monkeypatch.setattr(pdl, "_is_hopper_or_later", lambda device: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return torch.device("cuda")


def test_pdl_is_on_only_with_the_flag(hopper, monkeypatch):
    monkeypatch.delenv("LMDEPLOY_PDL", raising=False)
    assert not pdl.pdl_enabled(hopper)
    monkeypatch.setenv("LMDEPLOY_PDL", "0")
    assert not pdl.pdl_enabled(hopper)
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    assert pdl.pdl_enabled(hopper)


def test_pdl_is_off_under_the_interpreter_and_off_cuda(hopper, monkeypatch):
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    assert not pdl.pdl_enabled(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.pdl_enabled(hopper)


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


def _graph_with_pdl_equals_eager_without(chain, layers, inputs, monkeypatch) -> None:
    """`chain(x, layers)` eager without PDL, then captured with PDL and replayed 200 times
    over `inputs` in turn: every replay's output equal to the eager one, bit for bit."""
    monkeypatch.delenv("LMDEPLOY_PDL", raising=False)
    expected = [chain(x, layers) for x in inputs]
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    if not pdl.pdl_enabled(torch.device("cuda")):
        pytest.skip("PDL needs compute capability 9.0 or later")
    static_x = inputs[0].clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compiles the PDL variants outside the capture
        assert torch.equal(chain(static_x, layers), expected[0])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = chain(static_x, layers)
    for replay in range(200):
        which = replay % len(inputs)
        static_x.copy_(inputs[which])
        graph.replay()
        assert torch.equal(static_out, expected[which]), f"replay {replay} differs"


@pytest.mark.skipif(not ON_CUDA, reason="PDL needs a CUDA device")
def test_mlp_chain_in_a_graph_with_pdl_matches_eager_without(monkeypatch):
    layers = _layers(hidden=2048, inter=5632, num_layers=8)
    inputs = [torch.randn(1, 2048, device="cuda").bfloat16() for _ in range(4)]
    _graph_with_pdl_equals_eager_without(_mlp_chain, layers, inputs, monkeypatch)


@pytest.mark.skipif(not ON_CUDA, reason="PDL needs a CUDA device")
def test_moe_block_in_a_graph_with_pdl_matches_eager_without(monkeypatch):
    # Qwen3-30B-A3B's routing (128 experts, top 8: the one-warp route+align and the decode
    # tiles), narrower experts so that 8 layers stay small.
    layers = _moe_layers(hidden=1024, inter=256, num_experts=128, num_layers=8)
    inputs = [torch.randn(1, 1024, device="cuda").bfloat16() for _ in range(4)]
    _graph_with_pdl_equals_eager_without(_moe_chain, layers, inputs, monkeypatch)
