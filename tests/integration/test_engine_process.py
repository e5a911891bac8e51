"""The api_server's engine in its own process, on the embedded model: a real spawned engine
process behind `RemoteEngine`, against the same engine in this process."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.models.registry import UnsupportedArchitecture
from lmdeploy.application.generation import GenerationService
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.infrastructure import engine_process
from lmdeploy.infrastructure.factory import build_container

PROMPTS = ["The capital of France is", "List three colours:", "1, 2, 3, 4,"]


def _args(model_path=None, **config) -> engine_process.EngineProcessArgs:
    backend_config = PytorchEngineConfig(cache_max_entry_count=0.05, **config)
    return engine_process.EngineProcessArgs(
        {"model_path": model_path, "backend_config": backend_config, "backend": "pytorch"},
        "WARNING",
    )


@pytest.fixture(scope="module")
def far():
    """A front over the engine process: the server's container, attached to it."""
    args = _args()
    container = build_container(**args.container_args)
    assert engine_process.wanted(container)
    engine_process.attach(container, args)
    container.init_resources()
    yield container.generation()
    container.shutdown_resources()


def _greedy(service: GenerationService, prompt: str, max_new_tokens: int = 12):
    request = service.prepare(
        prompt, GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    )
    outs = list(service.submit(request))
    return (
        "".join(o.text for o in outs),
        sum((o.token_ids for o in outs), []),
        outs[-1].finish_reason,
    )


def test_greedy_outputs_equal_the_in_process_engines(far):
    with pipeline(None, PytorchEngineConfig(cache_max_entry_count=0.05)) as near:
        expected = [_greedy(near.service, p) for p in PROMPTS]
    assert [_greedy(far, p) for p in PROMPTS] == expected
    stats = far.engine.stats()
    assert stats.num_finished_length + stats.num_finished_stop == len(PROMPTS)


def test_a_model_the_engine_cannot_build_is_raised_in_the_front_with_its_type(tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=128
    ).to_dict()
    config["architectures"] = ["NoSuchForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="NoSuchForCausalLM"):
        engine_process.start(_args(str(tmp_path)))


def test_a_bad_engine_setting_keeps_its_argument_name():
    # The embedded model's 576 input features are no multiple of AWQ's group size.
    with pytest.raises(InvalidArgument, match="group_size") as raised:
        engine_process.start(_args(model_format="awq"))
    assert raised.value.argument == "quantization_config.group_size"


def test_a_killed_engine_process_fails_its_requests_and_later_ones():
    args = _args()
    container = build_container(**args.container_args)
    engine_process.attach(container, args)
    container.init_resources()
    service = container.generation()
    gen = GenerationConfig(max_new_tokens=1000, ignore_eos=True)
    stream = iter(service.submit(service.prepare("Count to a thousand:", gen)))
    next(stream)
    os.kill(service.engine._process.pid, signal.SIGKILL)
    started = time.monotonic()
    last = list(stream)[-1]
    assert last.finish_reason == "error" and "engine process exited" in last.error
    assert time.monotonic() - started < 10
    assert service.engine.failure is not None
    later = list(service.submit(service.prepare("Hi", GenerationConfig(max_new_tokens=2))))
    assert later[-1].finish_reason == "error"
    container.shutdown_resources()  # returns at once: the process is gone
