"""Piecewise graphs (runner/piecewise_graph.py) give the eager model's logits for prefill and
mixed steps, at and below a bucket's token count, on tiny random Llama and Qwen2 models; steps
they do not take fall back; the attention hook is gone outside a capture.

CUDA graphs cannot run here, so the graphs are `RecordedGraph`s: each records the aten ops run
between `capture_begin` and `capture_end` with the very tensors they read and wrote (as a CUDA
graph records kernels on fixed addresses) and runs them again on `replay`. The models run in
float64: in float32 the CPU's norms, SiLU and rotary are C calls through ctypes, which no
recorder sees (on CUDA every one of them is a captured kernel).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from lmdeploy.adapters.engines.pytorch.layers.graph_break import current_break
from lmdeploy.adapters.engines.pytorch.layers.linear import prepare_linears
from lmdeploy.adapters.engines.pytorch.models.config import ModelConfig
from lmdeploy.adapters.engines.pytorch.models.registry import model_class
from lmdeploy.adapters.engines.pytorch.models.weights import load_weights
from lmdeploy.adapters.engines.pytorch.runner.piecewise_graph import (
    PiecewiseGraphs,
    enabled,
    token_buckets,
)
from lmdeploy.adapters.engines.pytorch.runner.runner import PytorchModelRunner
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import StepPlan
from lmdeploy.domain.sequence import Sequence
from tests.integration.tiny_models import TINY_SHAPE, tiny_model

BLOCK_SIZE, MAX_TOKENS = 16, 80  # buckets 16, 32, 48, 64, 80


class _Recorder(TorchDispatchMode):
    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("a host sync inside a captured segment (CUDA refuses it)")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class RecordedGraph:
    """A CUDA graph's contract on the CPU: replay reruns the captured ops on the same tensors."""

    def __init__(self) -> None:
        self.ops: list = []
        self._mode: _Recorder | None = None

    def capture_begin(self, pool=None) -> None:
        self._mode = _Recorder(self.ops)
        self._mode.__enter__()

    def capture_end(self) -> None:
        assert self._mode is not None, "capture_end without capture_begin"
        self._mode.__exit__(None, None, None)
        self._mode = None

    def pool(self) -> None:
        return None

    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            for dst, src in zip(_leaves(out), _leaves(new), strict=True):
                # A view, an in-place or out= result (or a no-op `to`) shares the memory
                # the rerun wrote; a fresh result goes where the capture's was read from.
                if isinstance(dst, torch.Tensor) and not _same_memory(dst, src):
                    dst.copy_(src)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _leaves(x) -> list:
    return list(x) if isinstance(x, tuple | list) else [x]


def _runner(hf_config: transformers.PretrainedConfig) -> PytorchModelRunner:
    hf = tiny_model(hf_config)
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    model = model_class(cfg.architectures)(cfg)
    assert type(model).__name__ == hf_config.architectures[0]
    load_weights(model, hf.state_dict().items())
    model = model.to(torch.float64).eval()
    prepare_linears(model, torch.device("cpu"), torch.float64)
    return PytorchModelRunner(
        model, 64, BLOCK_SIZE, torch.device("cpu"), torch.float64, max_batch_size=8
    )


def _pieces(runner: PytorchModelRunner, new_graph=RecordedGraph) -> PiecewiseGraphs:
    rope = runner.rope
    return PiecewiseGraphs(
        runner.model,
        runner.kv_caches,
        rope.cos.shape[1],
        rope.cos.dtype,
        MAX_TOKENS,
        torch.device("cpu"),
        new_graph=new_graph,
    )


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def runner(request) -> PytorchModelRunner:
    if request.param == "llama":
        config = transformers.LlamaConfig(
            **TINY_SHAPE, tie_word_embeddings=False, architectures=["LlamaForCausalLM"]
        )
    else:  # biases on q/k/v, a tied LM head
        config = transformers.Qwen2Config(
            **TINY_SHAPE, tie_word_embeddings=True, architectures=["Qwen2ForCausalLM"]
        )
    runner = _runner(config)
    pieces = _pieces(runner)
    pieces.capture()
    assert pieces.sizes == [16, 32, 48, 64, 80]
    runner.piecewise = pieces
    return runner


class _Blocks:
    """Disjoint block tables for the sequences of one test."""

    def __init__(self) -> None:
        self.next = 0

    def seq(self, length: int, seed: int, **sampling) -> Sequence:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, TINY_SHAPE["vocab_size"], (length,), generator=gen).tolist()
        seq = Sequence(ids, SamplingParams(**sampling), 256)
        num = -(-length // BLOCK_SIZE)
        seq.block_table = list(range(self.next, self.next + num))
        self.next += num
        return seq


def _eager_then_pieces(runner: PytorchModelRunner, plan: StepPlan) -> tuple:
    """Logits of `plan` eagerly and then through the piecewise graphs (both write the same
    K/V to the same slots), and whether the second run replayed."""
    pieces, before = runner.piecewise, runner.piecewise.replays
    with torch.inference_mode():
        runner.piecewise = None
        eager, _ = runner._forward(plan)
        runner.piecewise = pieces
        got, _ = runner._forward(plan)
    return eager, got, pieces.replays == before + 1


def _advance(plan: StepPlan) -> None:
    for seq, num in zip(plan.seqs, plan.num_scheduled, strict=True):
        seq.num_cached_tokens += num


@pytest.mark.parametrize("lengths", [[5, 17, 20], [9, 40, 15]], ids=["42_tokens", "64_bucket"])
def test_a_prefill_step_gives_the_eager_logits(runner, lengths):
    blocks = _Blocks()
    plan = StepPlan([blocks.seq(n, seed=i) for i, n in enumerate(lengths)])
    eager, got, replayed = _eager_then_pieces(runner, plan)
    assert replayed
    torch.testing.assert_close(got, eager, rtol=1e-9, atol=1e-9)


def test_a_shorter_step_pads_the_rows_a_longer_one_wrote_with_no_slot(runner):
    """On CUDA the rotary kernel writes K/V inside the segments: a padding row's slot -1
    writes nothing, where a stale slot would overwrite a token of the longer step's cache."""
    blocks = _Blocks()
    longer = StepPlan([blocks.seq(40, seed=7), blocks.seq(20, seed=8)])  # 60 tokens, bucket 64
    shorter = StepPlan([blocks.seq(42, seed=9)])  # bucket 48
    for plan in (longer, shorter):
        _, _, replayed = _eager_then_pieces(runner, plan)
        assert replayed
    slots = runner.piecewise.slot_mapping
    assert (slots[42:48] == -1).all()
    assert slots[:42].tolist() == _slots(shorter.seqs[0])


def _slots(seq: Sequence) -> list[int]:
    return [seq.block_table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in range(42)]


@pytest.mark.parametrize(
    "decodes, chunk, prompt",
    [((12, 30), 10, 7), ((20, 33, 3), 13, 16)],
    ids=["22_tokens", "32_bucket"],
)
def test_a_mixed_step_gives_the_eager_logits(runner, decodes, chunk, prompt):
    """Decoding sequences, a prefill continuing after a cached chunk, and a new prompt."""
    blocks = _Blocks()
    running = [blocks.seq(n, seed=10 + i) for i, n in enumerate(decodes)]
    chunked = blocks.seq(chunk + 20, seed=20)
    first = StepPlan(running + [chunked], [n - 1 for n in decodes] + [20])
    with torch.inference_mode():
        runner._forward(first)  # their context, in the cache
    _advance(first)
    fresh = blocks.seq(prompt, seed=30)
    plan = StepPlan(running + [chunked, fresh], [1] * len(decodes) + [chunk, prompt])
    eager, got, replayed = _eager_then_pieces(runner, plan)
    assert replayed and not all(n == 1 for n in plan.num_scheduled)
    torch.testing.assert_close(got, eager, rtol=1e-9, atol=1e-9)


def test_a_step_past_the_largest_bucket_runs_eagerly(runner):
    blocks = _Blocks()
    plan = StepPlan([blocks.seq(50, seed=1), blocks.seq(31, seed=2)])  # 81 tokens
    eager, got, replayed = _eager_then_pieces(runner, plan)
    assert not replayed
    torch.testing.assert_close(got, eager, rtol=0, atol=0)


def test_a_step_that_wants_hidden_states_runs_eagerly(runner):
    blocks = _Blocks()
    plan = StepPlan([blocks.seq(12, seed=3, output_last_hidden_state="all"), blocks.seq(5, 4)])
    pieces, before = runner.piecewise, runner.piecewise.replays
    with torch.inference_mode():
        _, extras = runner._forward(plan)
    assert pieces.replays == before and extras is not None and extras[0] is not None


def _failing_at_second_segment() -> type[RecordedGraph]:
    started: list[RecordedGraph] = []

    class FailingGraph(RecordedGraph):
        def capture_begin(self, pool=None) -> None:
            started.append(self)
            if len(started) == 2:
                raise RuntimeError("capture failed")
            super().capture_begin(pool)

    return FailingGraph


def test_the_attention_hook_is_gone_outside_a_capture_even_a_failed_one(runner):
    assert current_break() is None
    pieces = _pieces(runner, _failing_at_second_segment())
    with pytest.raises(RuntimeError, match="capture failed"):
        pieces.capture()
    assert current_break() is None
    blocks = _Blocks()
    plan = StepPlan([blocks.seq(7, seed=5), blocks.seq(3, seed=6)])
    with torch.inference_mode():
        first = runner._forward(plan)[0]
        again = runner._forward(plan)[0]  # attention ran for real: the same context both times
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_only_cuda_at_tp1_without_lora_and_without_the_off_switch_captures(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.delenv("LMDEPLOY_PIECEWISE_GRAPHS", raising=False)
    assert enabled(cuda, tensor_parallel=False, lora=False)  # on by default
    monkeypatch.setenv("LMDEPLOY_PIECEWISE_GRAPHS", "0")
    assert not enabled(cuda, tensor_parallel=False, lora=False)
    monkeypatch.setenv("LMDEPLOY_PIECEWISE_GRAPHS", "1")
    assert enabled(cuda, tensor_parallel=False, lora=False)
    assert not enabled(cpu, tensor_parallel=False, lora=False)
    assert not enabled(cuda, tensor_parallel=True, lora=False)
    assert not enabled(cuda, tensor_parallel=False, lora=True)


def test_buckets_are_fine_where_steps_are_short_and_end_at_the_step_budget():
    sizes = token_buckets(4096 + 256)
    assert sizes[:4] == [16, 32, 48, 64] and 512 in sizes and 2048 in sizes
    assert sizes[-3:] == [3072, 4096, 4352]
    assert token_buckets(40) == [16, 32, 40]
