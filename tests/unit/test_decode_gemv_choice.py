"""Which one-row kernel a dense linear gets (backends/cuda/linear.py), decided here from
injected timings: the faster per shape, cuBLAS on a tie, and the GEMV only for one-row inputs
of the shape it was timed on. The timing itself and the kernel need a GPU (tests/kernels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmdeploy.adapters.engines.pytorch.layers.linear import (
    ColumnParallelLinear,
    RowParallelLinear,
    prepare_linears,
)

CFG = {"BLOCK_N": 8, "BLOCK_K": 512, "SPLIT_K": 2, "num_warps": 4}


def _cuda_linear():  # imported in the tests: it imports Triton (see tests/kernels/conftest.py)
    from lmdeploy.adapters.engines.pytorch.backends.cuda import linear

    return linear


def test_fastest_keeps_the_faster_and_ties_go_to_cublas():
    fastest = _cuda_linear().fastest
    assert fastest(16.4, [13.0, 12.1, 14.0]) == 1
    assert fastest(12.1, [12.1, 13.0]) is None
    assert fastest(10.0, [10.5]) is None
    assert fastest(10.0, []) is None


def test_a_credit_moves_near_ties_to_the_gemv_and_no_more():
    fastest = _cuda_linear().fastest
    assert fastest(10.0, [11.0], credit_us=1.6) == 0
    assert fastest(10.0, [11.6], credit_us=1.6) is None
    assert fastest(10.0, [12.0], credit_us=1.6) is None


def _timer(table: dict[tuple[int, int], tuple[float, list[float]]], calls: list):
    def timer(shape, weights):
        calls.append((shape, len(weights)))
        cublas, ours = table[(shape.n, shape.k)]
        return cublas, [(dict(CFG, SPLIT_K=i + 1), us) for i, us in enumerate(ours)]

    return timer


def test_each_distinct_shape_is_timed_once_and_its_linears_share_the_choice():
    linear = _cuda_linear()
    qkv, o, tie = torch.empty(48, 32), torch.empty(32, 32), torch.empty(64, 32)
    weights = [(qkv, None), (o, None), (qkv.clone(), None), (tie, None), (o.clone(), None)]
    calls: list = []
    table = {(48, 32): (16.4, [13.0, 12.1]), (32, 32): (7.0, [9.0, 8.0]), (64, 32): (5.0, [5.0])}
    kernels = linear.choose_decode_gemvs(weights, timer=_timer(table, calls))
    assert sorted((s.n, count) for s, count in calls) == [(32, 2), (48, 2), (64, 1)]
    assert kernels[0] is kernels[2] and kernels[0].config["SPLIT_K"] == 2  # the faster tiles
    assert kernels[1] is kernels[3] is kernels[4] is None  # cuBLAS faster; a tie keeps cuBLAS


def test_with_pdl_the_gemv_is_credited_the_chain_cublas_would_break(monkeypatch):
    linear = _cuda_linear()
    w, near, far = torch.empty(48, 32), torch.empty(32, 32), torch.empty(64, 32)
    weights = [(w, None), (near, None), (far, None)]
    table = {(48, 32): (16.4, [12.1]), (32, 32): (7.0, [8.0]), (64, 32): (5.0, [7.0])}
    chosen = linear.choose_decode_gemvs(weights, timer=_timer(table, []))
    assert [k is not None for k in chosen] == [True, False, False]
    monkeypatch.setattr(linear, "pdl_enabled", lambda device: True)
    chosen = linear.choose_decode_gemvs(weights, timer=_timer(table, []))
    assert [k is not None for k in chosen] == [True, True, False]  # within 2 pairs' overlap


def test_bias_and_dtype_are_part_of_the_shape():
    linear = _cuda_linear()
    w = torch.empty(48, 32)
    shapes = {linear.GemvShape.of(w, None), linear.GemvShape.of(w, torch.empty(48))}
    shapes.add(linear.GemvShape.of(w.half(), None))
    assert len(shapes) == 3


def test_the_gemv_runs_only_one_row_of_the_shape_it_was_timed_on():
    linear = _cuda_linear()
    calls = []

    def kernel(x, w, b, config):
        calls.append((tuple(x.shape), config))
        return F.linear(x, w, b)

    layer = ColumnParallelLinear(32, 48)
    torch.nn.init.normal_(layer.weight)
    shape = linear.GemvShape.of(layer.weight, None)
    layer.method.kernel = linear.DecodeGemv(shape, CFG, kernel=kernel)
    one, two = torch.randn(1, 32), torch.randn(2, 32)
    torch.testing.assert_close(layer(one), F.linear(one, layer.weight))
    torch.testing.assert_close(layer(two), F.linear(two, layer.weight))
    layer.method.kernel(one, torch.randn(40, 32))  # another linear's weight: not measured
    layer.method.kernel(one, layer.weight, torch.zeros(48))  # with a bias: another shape
    assert calls == [((1, 32), CFG)]


def test_row_parallel_linear_runs_its_chosen_kernel_too():
    linear = _cuda_linear()
    calls = []
    layer = RowParallelLinear(32, 24, bias=True)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    shape = linear.GemvShape.of(layer.weight, layer.kernel_bias())

    def kernel(x, w, b, config):
        calls.append(b is not None)
        return F.linear(x, w, b)

    layer.method.kernel = linear.DecodeGemv(shape, CFG, kernel=kernel)
    x = torch.randn(1, 32)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert calls == [True]


def test_prepare_linears_times_nothing_off_cuda():
    model = torch.nn.Sequential(ColumnParallelLinear(32, 48), RowParallelLinear(48, 32))
    for p in model.parameters():
        torch.nn.init.normal_(p)
    prepare_linears(model, torch.device("cpu"), torch.float32, pack=False, decode_gemv=True)
    assert all(m.method.kernel is F.linear for m in model)


def test_a_timing_that_fails_keeps_cublas_everywhere(caplog):
    linear = _cuda_linear()

    def failing(shape, weights):
        raise RuntimeError("capture failed")

    weights = [(torch.empty(48, 32), None), (torch.empty(32, 32), None)]
    assert linear.choose_decode_gemvs(weights, timer=failing) == [None, None]
    assert "cuBLAS for every shape" in caplog.text
