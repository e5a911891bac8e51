"""4-bit AWQ and GPTQ checkpoints through pipeline(): a tiny random model quantized here by a
reference round-to-nearest quantizer (per group, asymmetric or symmetric), written in each
format's own layout, runs as the float32 model whose weights are the dequantised ones: the
same greedy ids and logits within 1e-3. The packers (`quant_formats.py`) follow AutoAWQ's and
AutoGPTQ's writers, independently of the engine's readers."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.kernels.pdl import pdl_enabled
from tests.conftest import LONG_TEXT

from .quant_formats import LINEARS, quantize_rtn, to_awq, to_gptq
from .tiny_models import TINY_SHAPE, tiny_model


@dataclass(frozen=True)
class Case:
    config: transformers.PretrainedConfig
    fmt: str
    group: int
    sym: bool = False


CASES = {
    "llama_awq_g128": Case(transformers.LlamaConfig(**TINY_SHAPE), "awq", 128),
    "llama_gptq_g64": Case(transformers.LlamaConfig(**TINY_SHAPE), "gptq", 64),
    "qwen2_bias_gptq_sym_g32": Case(transformers.Qwen2Config(**TINY_SHAPE), "gptq", 32, sym=True),
    "qwen2_bias_awq_g64": Case(transformers.Qwen2Config(**TINY_SHAPE), "awq", 64),
}
# Prompt lengths across the 16-token blocks, and the tokens each generates.
PROMPT_LENGTHS, NEW_TOKENS = (9, 40, 65), 8


@dataclass(frozen=True)
class Quantized:
    directory: Path
    reference: transformers.PreTrainedModel  # float32, the dequantised weights


def write_quantized(case: Case, directory: Path, hf_tokenizer) -> Quantized:
    model = tiny_model(case.config)
    reference = copy.deepcopy(model)
    tensors, ref_state = {}, reference.state_dict()
    quant_cfg: dict = {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 2)
        if name.endswith(".weight") and module[-2] in LINEARS:
            codes, zeros, scales, dequant = quantize_rtn(tensor, case.group, case.sym)
            ref_state[name].copy_(dequant)
            if case.fmt == "awq":
                packed, quant_cfg = to_awq(codes, zeros, scales, case.group)
            else:
                packed, quant_cfg = to_gptq(codes, zeros, scales, case.group, case.sym)
            tensors.update({f"{module[0]}.{module[1]}.{k}": v for k, v in packed.items()})
        else:
            tensors[name] = tensor.contiguous()
    directory.mkdir(parents=True, exist_ok=True)
    config = case.config.to_dict() | {
        "architectures": [type(model).__name__],
        "quantization_config": quant_cfg,
        "torch_dtype": "float16",
    }
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf_tokenizer.save_pretrained(directory)
    return Quantized(directory, reference)


@pytest.fixture(scope="module", params=CASES.values(), ids=CASES.keys())
def quantized(request, tmp_path_factory, hf_tokenizer) -> Quantized:
    return write_quantized(request.param, tmp_path_factory.mktemp("quantized"), hf_tokenizer)


def engine_outputs(directory: Path, prompt_ids: list[list[int]], **options):
    """Greedy ids of every prompt, and the logits of the last prompt's rows."""
    config = PytorchEngineConfig(session_len=256, block_size=16, **options)
    pipe = pipeline(str(directory), backend_config=config)
    try:
        greedy = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)
        ids = [r.token_ids for r in pipe(prompt_ids, gen_config=greedy)]
        gen = GenerationConfig(max_new_tokens=1, output_logits="all")
        logits = pipe([prompt_ids[-1]], gen_config=gen)[0].logits
    finally:
        pipe.close()
    return ids, logits


def reference_outputs(model: transformers.PreTrainedModel, prompt_ids: list[list[int]]):
    ids = []
    with torch.no_grad():
        for prompt in prompt_ids:
            out = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=0,
            )
            ids.append(out[0, len(prompt) :].tolist())
        logits = model(torch.tensor([prompt_ids[-1]])).logits[0]
    return ids, logits


def test_on_cpu_greedy_ids_and_logits_equal_the_dequantised_float32_model(quantized, hf_tokenizer):
    text_ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    prompt_ids = [text_ids[i : i + n] for i, n in enumerate(PROMPT_LENGTHS)]
    ids, logits = engine_outputs(quantized.directory, prompt_ids, device_type="cpu")
    expected_ids, expected_logits = reference_outputs(quantized.reference, prompt_ids)
    assert ids == expected_ids
    torch.testing.assert_close(logits.float(), expected_logits, atol=1e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the W4A16 kernel runs on CUDA")
def test_on_cuda_the_packed_weights_and_kernel_give_the_dequantised_models_outputs(
    quantized, hf_tokenizer
):
    """float32 activations, so the kernel's sums differ from the reference's only in order;
    CUDA graphs capture the decode steps (split-K included)."""
    text_ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    prompt_ids = [text_ids[i : i + n] for i, n in enumerate(PROMPT_LENGTHS)]
    ids, logits = engine_outputs(
        quantized.directory, prompt_ids, device_type="cuda", dtype="float32"
    )
    expected_ids, expected_logits = reference_outputs(quantized.reference, prompt_ids)
    assert ids == expected_ids
    torch.testing.assert_close(logits.float().cpu(), expected_logits, atol=2e-3, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the W4A16 kernel runs on CUDA")
def test_on_cuda_pdl_changes_no_greedy_ids(quantized, hf_tokenizer, monkeypatch):
    """The batch-1 decode chain, the W4A16 GEMV included, launched with programmatic
    dependent launch (LMDEPLOY_PDL=1, lmdeploy_kernels/pdl.py) under CUDA graphs gives the ids of the
    launches without it."""
    monkeypatch.setenv("LMDEPLOY_PDL", "1")
    if not pdl_enabled(torch.device("cuda")):
        pytest.skip("PDL needs compute capability 9.0 or later")
    text_ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    prompt_ids = [text_ids[i : i + n] for i, n in enumerate(PROMPT_LENGTHS)]

    greedy = GenerationConfig(max_new_tokens=NEW_TOKENS, ignore_eos=True)

    def greedy_ids(flag: str) -> list[list[int]]:
        monkeypatch.setenv("LMDEPLOY_PDL", flag)
        config = PytorchEngineConfig(
            session_len=256, block_size=16, device_type="cuda", dtype="float32"
        )
        pipe = pipeline(str(quantized.directory), backend_config=config)
        try:  # one prompt at a time: batch 1 is where the one-row GEMV runs
            return [pipe([p], gen_config=greedy)[0].token_ids for p in prompt_ids]
        finally:
            pipe.close()

    assert greedy_ids("1") == greedy_ids("0")


def _with_quant(directory: Path, tmp_path: Path, **changes) -> Path:
    """A copy of a quantized checkpoint whose quantization_config is changed."""
    target = tmp_path / "changed"
    target.mkdir()
    for file in directory.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"].update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.fixture(scope="module")
def awq_directory(tmp_path_factory, hf_tokenizer) -> Path:
    case = CASES["llama_awq_g128"]
    return write_quantized(case, tmp_path_factory.mktemp("awq"), hf_tokenizer).directory


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"bits": 8}, "bits"),
        ({"group_size": 16}, "group_size"),
        ({"version": "gemv"}, "version"),
        ({"quant_method": "gptq", "desc_act": True}, "desc_act"),
        ({"quant_method": "hqq"}, "quant_method"),
        ({"modules_to_not_convert": ["mlp.down_proj"]}, "modules_to_not_convert"),
        ({"quant_method": "gptq", "lm_head": True}, "lm_head"),
    ],
)
def test_quantizations_it_cannot_run_are_refused_naming_the_field(
    awq_directory, tmp_path, changes, field
):
    directory = _with_quant(awq_directory, tmp_path, **changes)
    with pytest.raises(InvalidArgument, match=field):
        pipeline(str(directory), backend_config=PytorchEngineConfig(session_len=64))


def test_a_group_size_that_does_not_divide_a_linears_inputs_is_refused():
    from lmdeploy.adapters.engines.pytorch.layers.linear import RowParallelLinear
    from lmdeploy.adapters.engines.pytorch.layers.quantization.awq import AWQConfig

    with pytest.raises(InvalidArgument, match="group_size"):
        RowParallelLinear(96, 64, quant_config=AWQConfig(group_size=64))


def test_a_model_format_contradicting_the_checkpoint_is_refused(awq_directory):
    with pytest.raises(InvalidArgument, match="model_format"):
        pipeline(
            str(awq_directory),
            backend_config=PytorchEngineConfig(session_len=64, model_format="gptq"),
        )


def test_a_dense_checkpoint_given_a_4bit_model_format_is_refused_naming_it(tmp_path, hf_tokenizer):
    from .tiny_models import save_tiny_checkpoint

    save_tiny_checkpoint(transformers.LlamaConfig(**TINY_SHAPE), tmp_path, hf_tokenizer)
    config = PytorchEngineConfig(session_len=64, device_type="cpu", model_format="awq")
    with pytest.raises(InvalidArgument, match="model_format"):
        pipeline(str(tmp_path), backend_config=config)
