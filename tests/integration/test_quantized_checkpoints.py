"""4-bit AWQ and GPTQ checkpoints through pipeline(): a tiny random model quantized here by a
reference round-to-nearest quantizer (per group, asymmetric or symmetric), written in each
format's own layout, runs as the float32 model whose weights are the dequantised ones: the
same greedy ids and logits within 1e-3. The packers below follow AutoAWQ's and AutoGPTQ's
writers, independently of the engine's readers."""

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
from tests.conftest import LONG_TEXT

from .tiny_models import TINY_SHAPE, tiny_model

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ: nibble i holds column AWQ_PACK_ORDER[i]


def quantize_rtn(weight: torch.Tensor, group: int, sym: bool):
    """W [out, in] -> codes [out, in], zeros [out, in / group] (ints), scales fp16, and the
    dequantised W in float32."""
    w = weight.float().unflatten(1, (-1, group))
    if sym:
        scales = (w.abs().amax(-1) * 2 / 15).clamp(min=1e-6).half()
        zeros = torch.full_like(scales, 8, dtype=torch.int32)
    else:
        lo, hi = w.amin(-1), w.amax(-1)
        scales = ((hi - lo) / 15).clamp(min=1e-6).half()
        zeros = torch.round(-lo / scales.float()).clamp(0, 15).to(torch.int32)
    codes = (torch.round(w / scales.float()[..., None]) + zeros[..., None]).clamp(0, 15)
    codes = codes.to(torch.int32)
    dequant = (codes - zeros[..., None]).float() * scales.float()[..., None]
    return codes.flatten(1), zeros, scales, dequant.flatten(1)


def pack_columns(values: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """[rows, cols] ints -> int32 [rows, cols / 8], nibble i of each int the column order[i]."""
    packed = torch.zeros(values.shape[0], values.shape[1] // 8, dtype=torch.int64)
    for col in range(values.shape[1] // 8):
        for i in range(8):
            packed[:, col] |= (values[:, col * 8 + order[i]].long() & 0xF) << (4 * i)
    return _as_int32(packed)


def pack_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, cols] ints -> int32 [rows / 8, cols], nibble i of each int the row 8r + i."""
    packed = torch.zeros(values.shape[0] // 8, values.shape[1], dtype=torch.int64)
    for row in range(values.shape[0] // 8):
        for i in range(8):
            packed[row] |= (values[row * 8 + i].long() & 0xF) << (4 * i)
    return _as_int32(packed)


def _as_int32(packed: torch.Tensor) -> torch.Tensor:
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def to_awq(codes, zeros, scales, group):
    return {
        "qweight": pack_columns(codes.t(), AWQ_PACK_ORDER),
        "qzeros": pack_columns(zeros.t(), AWQ_PACK_ORDER),
        "scales": scales.t().contiguous(),
    }, {
        "quant_method": "awq",
        "bits": 4,
        "group_size": group,
        "zero_point": True,
        "version": "gemm",
    }


def to_gptq(codes, zeros, scales, group, sym):
    in_features = codes.shape[1]
    return {
        "qweight": pack_rows(codes.t()),
        "qzeros": pack_columns(zeros.t() - 1, tuple(range(8))),  # v1: zero point minus one
        "scales": scales.t().contiguous(),
        "g_idx": torch.arange(in_features, dtype=torch.int32) // group,
    }, {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": False, "sym": sym}


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


def engine_outputs(directory: Path, prompt_ids: list[list[int]]):
    """Greedy ids of every prompt, and the logits of the last prompt's rows."""
    config = PytorchEngineConfig(session_len=256, block_size=16)
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


def test_greedy_ids_and_logits_equal_the_dequantised_float32_model(quantized, hf_tokenizer):
    text_ids = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)
    prompt_ids = [text_ids[i : i + n] for i, n in enumerate(PROMPT_LENGTHS)]
    ids, logits = engine_outputs(quantized.directory, prompt_ids)
    expected_ids, expected_logits = reference_outputs(quantized.reference, prompt_ids)
    assert ids == expected_ids
    torch.testing.assert_close(logits.float(), expected_logits, atol=1e-3, rtol=0)


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
