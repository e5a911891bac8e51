import argparse

import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, TurbomindEngineConfig
from lmdeploy.adapters.cli.options import add_engine_options, engine_config_from
from lmdeploy.domain.errors import InvalidArgument


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"min_p": 2.0}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"n": 0}, "n"),
        ({"output_logits": "last"}, "output_logits"),
        ({"output_last_hidden_state": "every"}, "output_last_hidden_state"),
        ({"logits_processors": [1]}, "logits_processors"),
        ({"logits_processors": print}, "logits_processors"),
    ],
)
def test_invalid_generation_config_names_the_argument(kwargs, argument):
    with pytest.raises(InvalidArgument) as info:
        GenerationConfig(**kwargs)
    assert info.value.argument == argument
    assert argument in str(info.value)


def test_greedy_unless_do_sample_and_greedy_when_top_k_1_or_temperature_0():
    assert GenerationConfig().to_sampling_params().is_greedy
    assert not GenerationConfig(do_sample=True).to_sampling_params().is_greedy
    assert GenerationConfig(do_sample=True, top_k=1).to_sampling_params().is_greedy
    assert GenerationConfig(do_sample=True, temperature=0.0).to_sampling_params().is_greedy


def test_engine_configs_keep_documented_defaults():
    pt = PytorchEngineConfig()
    assert (pt.cache_max_entry_count, pt.block_size, pt.max_prefill_token_num, pt.session_len) == (
        0.8,
        64,
        4096,
        None,
    )
    tm = TurbomindEngineConfig()
    assert (tm.cache_block_seq_len, tm.max_prefill_token_num, tm.quant_policy) == (64, 8192, 0)


def test_tp_is_accepted_and_carried_from_turbomind_to_pytorch():
    assert PytorchEngineConfig(tp=2).tp == 2
    assert TurbomindEngineConfig(tp=4).to_pytorch().tp == 4


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_policy_reaches_the_pytorch_engine(bits):
    assert PytorchEngineConfig(quant_policy=bits).quant_policy == bits
    assert TurbomindEngineConfig(quant_policy=bits).to_pytorch().quant_policy == bits


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"nnodes": 0}, "nnodes"),
        ({"tp": 2, "nnodes": 2, "node_rank": 2}, "node_rank"),
        ({"tp": 3, "nnodes": 2}, "nnodes"),
        ({"distributed_executor_backend": "mpi"}, "distributed_executor_backend"),
        (
            {"tp": 2, "nnodes": 2, "distributed_executor_backend": "mp"},
            "distributed_executor_backend",
        ),
    ],
)
def test_bad_multi_node_settings_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        PytorchEngineConfig(**kwargs)


def test_multi_node_flags_reach_the_pytorch_engine_config():
    parser = argparse.ArgumentParser()
    add_engine_options(parser)
    args = parser.parse_args(["--tp", "4", "--nnodes", "2", "--node-rank", "1"])
    config = engine_config_from(args)
    assert (config.tp, config.nnodes, config.node_rank) == (4, 2, 1)


def test_turbomind_config_translates_to_pytorch():
    pt = TurbomindEngineConfig(
        session_len=512, cache_block_seq_len=32, max_batch_size=4
    ).to_pytorch()
    assert (pt.session_len, pt.block_size, pt.max_batch_size) == (512, 32, 4)


@pytest.mark.parametrize(
    "kwargs", [{"cache_max_entry_count": 0}, {"cache_max_entry_count": 1.5}, {"block_size": 0}]
)
def test_invalid_engine_values(kwargs):
    with pytest.raises(InvalidArgument):
        PytorchEngineConfig(**kwargs)


def test_num_cpu_blocks_sizes_the_host_pool_and_rejects_bad_values():
    assert PytorchEngineConfig(num_cpu_blocks=128).num_cpu_blocks == 128
    for bad in (-1, 2.5, "8"):
        with pytest.raises(InvalidArgument, match="num_cpu_blocks"):
            PytorchEngineConfig(num_cpu_blocks=bad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: GenerationConfig(temperature=2.5),
        lambda: GenerationConfig(top_p=0.0),
        lambda: GenerationConfig(n=0),
        lambda: PytorchEngineConfig(quant_policy=3),
        lambda: PytorchEngineConfig(num_gpu_blocks=-1),
        lambda: PytorchEngineConfig(tp=0),
        lambda: PytorchEngineConfig(cache_max_entry_count=0),
    ],
)
def test_config_errors_are_assertion_errors_as_in_0_6_5(make):
    """0.6.5 asserts its configs: code written for it catches AssertionError."""
    with pytest.raises(AssertionError) as info:
        make()
    assert isinstance(info.value, InvalidArgument)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quant_policy": 3},
        {"num_tokens_per_iter": -1},
        {"tp": 0},
        {"cache_max_entry_count": 0},
        {"tp": "two"},
    ],
)
def test_turbomind_config_errors_are_pydantic_validation_errors(kwargs):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=next(iter(kwargs))):
        TurbomindEngineConfig(**kwargs)


def test_served_model_name_is_the_model_path_as_given_and_the_default_keeps_its_name():
    from pathlib import Path

    from dependency_injector import providers

    from lmdeploy.adapters.loaders.model_source import ModelSource
    from lmdeploy.infrastructure.factory import build_container

    container = build_container("./models/my-llama.gguf")
    container.source.override(
        providers.Object(ModelSource("gguf", Path("models/my-llama.gguf"), "my-llama"))
    )
    assert container.model_name() == "./models/my-llama.gguf"  # 0.6.5: not the file stem
    default = build_container(None)
    default.source.override(providers.Object(ModelSource("gguf", None, "SmolLM2-135M-Instruct")))
    assert default.model_name() == "SmolLM2-135M-Instruct"
