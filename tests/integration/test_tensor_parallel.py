"""Tensor parallelism on the CPU (gloo): tp=2 gives the greedy ids of tp=1 over 64 tokens on
tiny random models of a dense family (Llama), one with biases (Qwen2), an MoE (Mixtral), and a
tied embedding with fewer KV heads than ranks; and a rank that dies fails the requests in
flight within seconds instead of hanging."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
import transformers

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidConfig

from .tiny_models import TINY_SHAPE, save_tiny_checkpoint, tiny_mixtral_config

PROMPTS = ["The capital of France is", "def fibonacci(n):", "One, two, three,"]
GREEDY_64 = GenerationConfig(max_new_tokens=64, do_sample=False, ignore_eos=True)

CONFIGS = {
    "llama": transformers.LlamaConfig(**TINY_SHAPE, tie_word_embeddings=False),
    # Qwen2's q/k/v biases; one KV head for two ranks: replicated.
    "qwen2_bias_replicated_kv": transformers.Qwen2Config(
        **{**TINY_SHAPE, "num_key_value_heads": 1}, tie_word_embeddings=True
    ),
    "mixtral": tiny_mixtral_config(),
}


def _engine(tp: int, **kw) -> PytorchEngineConfig:
    return PytorchEngineConfig(tp=tp, device_type="cpu", block_size=16, session_len=512, **kw)


def _greedy_ids(path: str, tp: int) -> list[list[int]]:
    with pipeline(path, backend_config=_engine(tp)) as pipe:
        return [out.token_ids for out in pipe(PROMPTS, gen_config=GREEDY_64)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_tokenizer) -> dict[str, str]:
    paths = {}
    for name, config in CONFIGS.items():
        directory = tmp_path_factory.mktemp(f"tp-{name}")
        save_tiny_checkpoint(config, directory, hf_tokenizer)
        paths[name] = str(directory)
    return paths


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family", list(CONFIGS))
def test_tp2_gives_the_greedy_ids_of_tp1(checkpoints, family):
    path = checkpoints[family]
    single, split = _greedy_ids(path, 1), _greedy_ids(path, 2)
    assert all(len(ids) == 64 for ids in split)
    assert split == single


def test_tp_that_does_not_divide_the_heads_is_refused_naming_them():
    # The embedded default model: 9 attention heads, 3 KV heads.
    with pytest.raises(InvalidConfig, match=r"tp=2 .*9 attention heads \(3 KV heads\)"):
        pipeline(backend_config=_engine(2))


def test_a_node_other_than_0_is_told_to_join_the_ray_cluster_instead():
    with pytest.raises(InvalidConfig, match=r"on node 1 run `ray start --address="):
        pipeline(backend_config=_engine(2, nnodes=2, node_rank=1))


@pytest.mark.timeout(120)
def test_a_rank_that_dies_fails_the_requests_in_flight_within_seconds(checkpoints):
    long = GenerationConfig(max_new_tokens=400, do_sample=False, ignore_eos=True)
    with pipeline(checkpoints["llama"], backend_config=_engine(2)) as pipe:
        (worker,) = [p for p in multiprocessing.active_children() if p.name == "tp-1"]
        stream = pipe.stream_infer(PROMPTS[0], gen_config=long)
        for _ in range(3):
            next(stream)
        os.kill(worker.pid, signal.SIGKILL)
        killed = time.monotonic()
        last = list(stream)[-1]
        assert time.monotonic() - killed < 10
        assert last.finish_reason == "error"
        # A later request ends at once with the same error instead of waiting on the dead rank.
        assert pipe(PROMPTS[1], gen_config=GREEDY_64).finish_reason == "error"


# Four loads of the 135M model on the CPU (tp=1, then three ranks) took 151 s on the shared
# 2-core machine, beyond the suite's budget for these tests: run it on demand.
@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("LMDEPLOY_TEST_TP3") != "1", reason="opt-in: LMDEPLOY_TEST_TP3=1 (~150 s)"
)
@pytest.mark.timeout(600)
def test_the_default_model_at_tp3_gives_the_greedy_ids_of_tp1():
    # 9 attention heads and 3 KV heads: one KV head and three query heads a rank.
    greedy = GenerationConfig(max_new_tokens=16, do_sample=False, ignore_eos=True)
    runs = {}
    for tp in (1, 3):
        with pipeline(backend_config=_engine(tp)) as pipe:
            runs[tp] = [out.token_ids for out in pipe(PROMPTS[:2], gen_config=greedy)]
    assert runs[3] == runs[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_decode_step_is_started_ahead_under_tp_even_when_forced(checkpoints, monkeypatch):
    """A forecast step's replay deadlocked rank 0 on two GPUs: under tp the runner must keep
    steps in order even when LMDEPLOY_DECODE_AHEAD=1 asks for them, and lose no token."""
    monkeypatch.setenv("LMDEPLOY_DECODE_AHEAD", "1")
    path = checkpoints["llama"]
    with pipeline(path, backend_config=_engine(2)) as pipe:
        split = [out.token_ids for out in pipe(PROMPTS, gen_config=GREEDY_64)]
        assert pipe.service.engine.runner.ahead_counters.started == 0
    monkeypatch.delenv("LMDEPLOY_DECODE_AHEAD")
    assert split == _greedy_ids(path, 1)
