"""On a GPU: the engine (Triton kernels, CUDA graphs) gives the greedy output of the CPU
engine and of transformers on CUDA. Skipped where there is no CUDA."""

from __future__ import annotations

import pytest
import torch

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.runner.piecewise_graph import (
    MAX_TOKENS as PIECEWISE_MAX_TOKENS,
)
from lmdeploy.kernels.pdl import pdl_enabled

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GEN = GenerationConfig(max_new_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random GQA Llama saved as an HF directory, with its transformers twin on CUDA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    _word_level_tokenizer(cfg.vocab_size).save_pretrained(path)
    return path, model.cuda()


def _word_level_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="w0", eos_token="w1")


def _ids(n: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(5, 1000, (n,), generator=gen).tolist()


def _config(device_type: str = "cuda", eager: bool = False, max_batch_size: int = 8, **options):
    return PytorchEngineConfig(
        device_type=device_type,
        dtype="float32",
        eager_mode=eager,
        block_size=16,
        session_len=1024,
        max_batch_size=max_batch_size,
        cache_max_entry_count=0.2,
        **options,
    )


def _run(path, device_type: str, eager: bool, prompts, gen: GenerationConfig = GEN):
    pipe = pipeline(str(path), backend_config=_config(device_type, eager))
    try:
        return [o.token_ids for o in pipe(prompts, gen_config=gen)]
    finally:
        pipe.close()


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda_graphs"])
def test_tiny_model_matches_cpu_and_transformers(tiny_llama, eager):
    path, hf = tiny_llama
    prompts = [_ids(n, seed) for seed, n in enumerate([1, 15, 16, 17, 100, 300])]
    ours_gpu = _run(path, "cuda", eager, prompts)
    ours_cpu = _run(path, "cpu", True, prompts)
    with torch.no_grad():
        theirs = [
            hf.generate(
                torch.tensor([p], device="cuda"),
                max_new_tokens=16,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(p) :].tolist()
            for p in prompts
        ]
    assert ours_gpu == theirs
    assert ours_gpu == ours_cpu


def test_seeded_sampling_on_cuda_is_reproducible(tiny_llama):
    """Sampling rows go through the fused Triton sampler: a seed fixes the draw, batch or not."""
    path, _ = tiny_llama
    prompts = [_ids(n, seed) for seed, n in enumerate([5, 40, 90])]

    def gen(seed: int) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=16,
            ignore_eos=True,
            do_sample=True,
            temperature=0.9,
            top_k=30,
            top_p=0.9,
            min_p=0.01,
            random_seed=seed,
        )

    first = _run(path, "cuda", False, prompts, gen(7))
    assert _run(path, "cuda", False, prompts, gen(7)) == first
    assert _run(path, "cuda", False, prompts[1:2], gen(7)) == first[1:2]
    assert _run(path, "cuda", False, prompts, gen(8)) != first


def test_default_model_on_cuda_matches_the_cpu_engine():
    from lmdeploy.adapters.loaders.model_source import ModelNotFound, embedded_model_file

    try:
        embedded_model_file()
    except ModelNotFound:
        pytest.skip("the embedded model is not installed here")
    prompts = ["Hi, pls intro yourself", "Shanghai is", "Write a haiku about the sea."]

    def run(device_type: str):
        config = PytorchEngineConfig(
            device_type=device_type,
            dtype="float32",
            session_len=1024,
            max_batch_size=8,
            cache_max_entry_count=0.2,
        )
        pipe = pipeline(None, backend_config=config)
        try:
            return [
                o.token_ids for o in pipe(prompts, gen_config=GenerationConfig(max_new_tokens=24))
            ]
        finally:
            pipe.close()

    assert run("cuda") == run("cpu")


def test_decoding_ahead_under_cuda_graphs_changes_no_output(tiny_llama, monkeypatch):
    """Each decode step is started before the previous step's tokens reach the host
    (decode_ahead.py): the outputs equal those of the same requests run step by step, across
    queued requests, stops on a sampled token, seeded sampling and min_new_tokens."""
    path, _ = tiny_llama
    prompts = [_ids(n, seed) for seed, n in enumerate([3, 20, 50, 90, 130, 17])]

    def run(ahead: str, gens):
        monkeypatch.setenv("LMDEPLOY_DECODE_AHEAD", ahead)
        pipe = pipeline(str(path), backend_config=_config(max_batch_size=3))
        try:
            outs = pipe(prompts, gen_config=gens)
            return [(o.token_ids, o.finish_reason) for o in outs], pipe.service.engine.runner
        finally:
            pipe.close()

    greedy = GenerationConfig(max_new_tokens=8, ignore_eos=True)
    probe, _ = run("0", [greedy] * len(prompts))
    stop_id = probe[1][0][3]  # the second request stops on it within 4 tokens
    gens = [
        GenerationConfig(max_new_tokens=40, ignore_eos=True),
        GenerationConfig(max_new_tokens=40, stop_token_ids=[stop_id]),
        GenerationConfig(
            max_new_tokens=30, do_sample=True, top_k=30, temperature=0.9, random_seed=5
        ),
        GenerationConfig(
            max_new_tokens=25, do_sample=True, top_p=0.8, temperature=1.2, random_seed=9
        ),
        GenerationConfig(max_new_tokens=20, min_new_tokens=12, stop_token_ids=[stop_id]),
        GenerationConfig(max_new_tokens=33, ignore_eos=True),
    ]
    on, runner = run("1", gens)
    off, _ = run("0", gens)
    assert on == off
    assert on[1][1] == "stop" and len(on[1][0]) <= 4
    counters = runner.ahead_counters
    assert counters.used >= 40 and counters.used >= 0.7 * counters.started, counters


def test_piecewise_graphs_change_no_greedy_output(tiny_llama, monkeypatch):
    """Steps with prompt tokens replayed as piecewise graphs around eager attention
    (LMDEPLOY_PIECEWISE_GRAPHS=1) give the ids of the eager steps: three slots for seven
    requests, refilled at once (prefill_interval 0) while the others decode, so most prefill
    steps are mixed; a 300-token prompt arrives in chunks of the 128-token budget."""
    path, _ = tiny_llama
    prompts = [_ids(n, seed) for seed, n in enumerate([3, 20, 50, 90, 300, 17, 64])]
    gens = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (9, 30, 14, 22, 6, 25, 11)]

    def run(flag: str):
        monkeypatch.setenv("LMDEPLOY_PIECEWISE_GRAPHS", flag)
        config = _config(max_batch_size=3, prefill_interval=0, max_prefill_token_num=128)
        pipe = pipeline(str(path), backend_config=config)
        try:
            return [o.token_ids for o in pipe(prompts, gen_config=gens)], pipe.service.engine
        finally:
            pipe.close()

    on, engine = run("1")
    off, plain = run("0")
    assert on == off
    pieces = engine.runner.piecewise
    assert plain.runner.piecewise is None and pieces is not None
    assert pieces.sizes[-1] == 128 + 3 and pieces.replays >= len(prompts) - 3, pieces.replays


def test_a_closed_pipeline_hands_its_device_memory_back(tiny_llama, monkeypatch):
    """Closed but still referenced, a pipeline that captured decode and piecewise graphs
    keeps nothing of its KV cache, weights or graph pools reserved: a pipeline built next in
    the process sizes its cache from the whole device."""
    path, _ = tiny_llama
    monkeypatch.delenv("LMDEPLOY_PIECEWISE_GRAPHS", raising=False)  # on by default
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    pipe = pipeline(str(path), backend_config=_config())
    pipe([_ids(20, 1), _ids(300, 2)], gen_config=GEN)
    engine = pipe.service.engine
    held = torch.cuda.memory_reserved() - before
    pipe.close()
    left = torch.cuda.memory_reserved() - before
    assert held > 1 << 30, held  # a fifth of the free memory went to the cache
    assert left < 256 << 20, f"{left / 2**20:.0f} MiB still reserved after close"
    pieces = engine.runner.piecewise
    assert engine.runner.graphs is not None and pieces.replays >= 1
    assert pieces.sizes[-1] == PIECEWISE_MAX_TOKENS  # the step budget is larger: capped


def test_pdl_changes_no_greedy_output(tiny_llama, monkeypatch):
    """The decode chain's kernels launched with programmatic dependent launch
    (lmdeploy_kernels/pdl.py, on by default on Hopper) under CUDA graphs give the ids of the launches
    without it (LMDEPLOY_PDL=0): one sequence alone (the batch-1 chain PDL is for), then several at once."""
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    if not pdl_enabled(torch.device("cuda")):
        pytest.skip("PDL needs compute capability 9.0 or later")
    path, _ = tiny_llama
    alone = [_ids(40, 0)]
    several = [_ids(n, seed) for seed, n in enumerate([3, 20, 90, 17], start=1)]
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True)

    def run(flag: str):
        monkeypatch.setenv("LMDEPLOY_PDL", flag)
        pipe = pipeline(str(path), backend_config=_config())
        try:
            return [[o.token_ids for o in pipe(p, gen_config=gen)] for p in (alone, several)]
        finally:
            pipe.close()

    assert run("1") == run("0")


def _write_lora(directory, cfg, rank: int, seed: int) -> str:
    """A random LoRA adapter on every linear of `cfg`'s Llama, in PEFT's files."""
    import json

    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    head_dim = hidden // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * head_dim
    sizes = {  # module -> (parent, in, out)
        "q_proj": ("self_attn", hidden, hidden),
        "k_proj": ("self_attn", hidden, kv),
        "v_proj": ("self_attn", hidden, kv),
        "o_proj": ("self_attn", hidden, hidden),
        "gate_proj": ("mlp", hidden, inter),
        "up_proj": ("mlp", hidden, inter),
        "down_proj": ("mlp", inter, hidden),
    }
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for name, (parent, in_size, out_size) in sizes.items():
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_size, generator=gen) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_size, rank, generator=gen) * 0.1
    directory.mkdir()
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": list(sizes)}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return str(directory)


def test_lora_in_cuda_graphs_with_decode_ahead_matches_the_cpu_engine(
    tiny_llama, tmp_path, monkeypatch
):
    """Adapters of ranks 8/16/32 and base rows in one batch, ending at different lengths (rows
    move up as one ends): the Triton kernels inside the decode graphs, with decode steps started
    ahead, give the CPU engine's ids (its torch path, grouped by adapter)."""
    monkeypatch.delenv("LMDEPLOY_DECODE_AHEAD", raising=False)  # on by default under graphs
    path, hf = tiny_llama
    adapters = {
        f"r{rank}": _write_lora(tmp_path / f"r{rank}", hf.config, rank, seed)
        for seed, rank in enumerate([8, 16, 32])
    }
    prompts = [_ids(n, seed) for seed, n in enumerate([5, 40, 17, 90, 33, 3])]
    names = ["r8", None, "r16", "r32", "r8", None]
    lengths = [6, 16, 9, 16, 3, 12]

    def run(device_type: str, names: list[str | None]):
        pipe = pipeline(str(path), backend_config=_config(device_type, adapters=adapters))
        try:
            service = pipe.service
            streams = [
                service.submit(
                    service.prepare(
                        p, GenerationConfig(max_new_tokens=n, ignore_eos=True), adapter_name=a
                    )
                )
                for p, a, n in zip(prompts, names, lengths, strict=True)
            ]
            ids = [[t for out in stream for t in out.token_ids] for stream in streams]
            return ids, pipe.service.engine.runner
        finally:
            pipe.close()

    gpu, runner = run("cuda", names)
    assert runner.graphs is not None and runner.ahead_counters.used > 0
    cpu, _ = run("cpu", names)
    assert gpu == cpu
    base, _ = run("cpu", [None] * len(names))
    assert all(gpu[i] != base[i] for i, name in enumerate(names) if name), "adapters no-ops"
