"""Multi-LoRA serving on a tiny Llama: each adapter's greedy ids equal transformers + peft's,
a batch mixing adapters and the base gives each row its solo ids, a pool with fewer slots
than adapters in use swaps them and still serves all, and bad adapters fail clearly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import UnknownAdapter
from tests.conftest import LONG_TEXT

from .lora_models import ADAPTERS, LoraSetup, make_lora_setup, peft_greedy, peft_model

MAX_NEW = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory, hf_tokenizer) -> LoraSetup:
    return make_lora_setup(tmp_path_factory.mktemp("lora"), hf_tokenizer)


@pytest.fixture(scope="module")
def prompt(hf_tokenizer) -> list[int]:
    return hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)[:37]  # > 2 blocks of 16


@pytest.fixture(scope="module")
def expected(setup, prompt) -> dict[str | None, list[int]]:
    """transformers + peft's greedy ids of each adapter, and of the base model (None)."""
    ids = {name: peft_greedy(peft_model(setup, name), prompt, MAX_NEW) for name in ADAPTERS}
    ids[None] = peft_greedy(peft_model(setup, None), prompt, MAX_NEW)
    assert len({tuple(v) for v in ids.values()}) == len(ids), "adapters should change the ids"
    return ids


def _pipe(setup: LoraSetup, **options):
    adapters = {name: str(path) for name, path in setup.adapter_dirs.items()}
    config = PytorchEngineConfig(session_len=256, block_size=16, adapters=adapters, **options)
    return pipeline(str(setup.base_dir), backend_config=config)


def _run_together(
    pipe, prompt: list[int], names: list[str | None], lengths: list[int] | None = None
) -> list[list[int]]:
    """Submit every request before reading any, so the engine batches them; `lengths`: each
    request's new tokens (MAX_NEW)."""
    service = pipe.service
    gens = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in lengths or []]
    gens = gens or [GenerationConfig(max_new_tokens=MAX_NEW, ignore_eos=True)] * len(names)
    streams = [
        service.submit(service.prepare(prompt, gen, adapter_name=name))
        for name, gen in zip(names, gens, strict=True)
    ]
    return [[t for out in stream for t in out.token_ids] for stream in streams]


def test_each_adapter_matches_peft_with_prefix_caching(setup, prompt, expected):
    # One prompt for all: a prefix cache keyed without the adapter would hand one adapter's
    # K/V to the next and change its ids.
    with _pipe(setup, enable_prefix_caching=True) as pipe:
        gen = GenerationConfig(max_new_tokens=MAX_NEW, ignore_eos=True)
        for name in [*ADAPTERS, None, *ADAPTERS]:
            got = pipe([prompt], gen_config=gen, adapter_name=name)[0].token_ids
            assert got == expected[name], f"adapter {name}"


def test_mixed_batch_gives_each_row_its_solo_ids(setup, prompt, expected):
    names = ["all8", None, "qv_mlp16", "kou8", None, "all8"]
    with _pipe(setup) as pipe:
        assert _run_together(pipe, prompt, names) == [expected[n] for n in names]


# Requests ending at different lengths: as each ends, the rows after it move up.
AHEAD_NAMES, AHEAD_LENGTHS = ["qv_mlp16", None, "all8", "kou8", "all8"], [3, 8, 5, 8, 2]


def test_decode_steps_started_ahead_keep_each_rows_adapter(setup, prompt, expected, monkeypatch):
    """Decode steps started before the previous step's tokens reach the host (decode_ahead.py,
    forced on for the CPU) run with their own rows' adapters: as requests end at different
    lengths, the forecast batch drops rows and the others move up, and each keeps its ids."""
    monkeypatch.setenv("LMDEPLOY_DECODE_AHEAD", "1")
    with _pipe(setup) as pipe:
        got = _run_together(pipe, prompt, AHEAD_NAMES, AHEAD_LENGTHS)
        assert got == [expected[n][:k] for n, k in zip(AHEAD_NAMES, AHEAD_LENGTHS, strict=True)]
        assert pipe.service.engine.runner.ahead_counters.used > 0, "no decode step started ahead"


def test_pool_smaller_than_adapters_in_use_swaps_and_serves_all(setup, prompt, expected):
    names = [*ADAPTERS, None, *reversed(ADAPTERS)]
    with _pipe(setup, max_loras=2) as pipe:
        assert _run_together(pipe, prompt, names) == [expected[n] for n in names]
        pool = pipe.service.engine.runner.lora
        assert pool.num_slots == 2 and pool.swap_ins > 2


def test_unknown_adapter_is_a_clear_error(setup, prompt):
    with _pipe(setup) as pipe, pytest.raises(UnknownAdapter, match="no LoRA adapter named 'nope'"):
        pipe([prompt], adapter_name="nope")


def test_adapter_of_another_shape_is_refused_naming_the_tensor(setup, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    source = setup.adapter_dirs["all8"]
    (bad / "adapter_config.json").write_text((source / "adapter_config.json").read_text())
    tensors = load_file(source / "adapter_model.safetensors")
    name = next(k for k in tensors if "layers.1.mlp.down_proj.lora_A" in k)
    tensors[name] = torch.zeros(8, 100)
    save_file(tensors, bad / "adapter_model.safetensors")
    config = PytorchEngineConfig(session_len=256, adapters={"bad": str(bad)})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.lora_A\.weight"):
        pipeline(str(setup.base_dir), backend_config=config)


def test_chat_session_keeps_its_adapter(setup, prompt):
    with _pipe(setup) as pipe:
        gen = GenerationConfig(max_new_tokens=4)
        session = pipe.chat("Hello", gen_config=gen, adapter_name="kou8")
        pipe.chat("More", session=session, gen_config=gen, adapter_name="kou8")
        with pytest.raises(ValueError, match="runs with adapter 'kou8'"):
            pipe.chat("Again", session=session, gen_config=gen)
