"""`lite auto_awq` on the embedded SmolLM2-135M-Instruct (fp32): the AutoAWQ checkpoint it
writes loads in the engine, and the search beats round-to-nearest on held-out perplexity.

The model's hidden size, 576, is not a multiple of 128, so group size 64 is used. The
calibration is small and the alpha grid coarse (8 windows of 128 tokens, 10 alphas, 10 clip
ratios) to stay within CI's budget; the issue's bar is measured as it asks: AWQ within +12%
of fp32's perplexity and at least 25% of the way from round-to-nearest's towards fp32's.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from lmdeploy.domain.errors import InvalidArgument

DATA = Path(__file__).parents[1] / "data"
MODEL = "SmolLM2-135M-Instruct"
GROUP = 64


def _options(work_dir: Path, **fields):
    from lmdeploy.application.quantization.auto_awq import AutoAwqOptions

    base = dict(
        work_dir=str(work_dir),
        calib_dataset=str(DATA / "calib.txt"),
        calib_samples=8,
        calib_seqlen=128,
        batch_size=8,
        w_group_size=GROUP,
        search_scale=True,
        search_grid=10,
        clip_grid=20,
    )
    return AutoAwqOptions(**{**base, **fields})


@pytest.fixture(scope="module")
def float_model():
    """The embedded model opened once (a GGUF read takes seconds); tests quantise copies."""
    from lmdeploy.adapters.quantization.hf_float_model import open_hf_float_model

    return open_hf_float_model(MODEL, "float32", "cpu")


def _fresh(float_model):
    from lmdeploy.adapters.quantization.awq_model import TorchAwqModel

    return TorchAwqModel(copy.deepcopy(float_model))


@pytest.fixture(scope="module")
def checkpoints(float_model, tmp_path_factory) -> dict[str, Path]:
    """The AWQ checkpoint made by the use case, and a round-to-nearest one (alpha 0, no
    clipping) made by the same adapter."""
    from lmdeploy.application.quantization.auto_awq import AwqPlan, auto_awq

    root = tmp_path_factory.mktemp("awq")
    awq = auto_awq(lambda: _fresh(float_model), _options(root / "awq"))
    rtn = _fresh(float_model)
    rtn.start([[rtn.encode("Hello")]])  # round-to-nearest reads no activations
    for index in range(rtn.num_layers):
        rtn.quantize_layer(index, AwqPlan((0.0,), GROUP, clip_grid=0))
    rtn.save(root / "rtn", _options(root).quantization_config())
    return {"awq": awq, "rtn": root / "rtn"}


def _ppl(pipe, ids: list[int]) -> float:
    return math.exp(pipe.get_ppl([ids])[0])


@pytest.fixture(scope="module")
def perplexities(checkpoints, default_pipe, hf_tokenizer) -> dict[str, float]:
    from lmdeploy import pipeline

    ids = hf_tokenizer.encode((DATA / "heldout.txt").read_text(), add_special_tokens=False)
    result = {"fp32": _ppl(default_pipe, ids)}
    for name, directory in checkpoints.items():
        pipe = pipeline(str(directory))
        try:
            result[name] = _ppl(pipe, ids)
        finally:
            pipe.close()
    print(f"held-out perplexity ({len(ids)} tokens): {result}")
    return result


def test_the_checkpoint_is_autoawqs_gemm_layout(checkpoints):
    from safetensors import safe_open

    directory = checkpoints["awq"]
    config = json.loads((directory / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "version": "gemm",
        "bits": 4,
        "group_size": GROUP,
        "zero_point": True,
    }
    assert (directory / "tokenizer.json").is_file()
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        qweight = f.get_tensor("model.layers.0.mlp.down_proj.qweight")
        scales = f.get_tensor("model.layers.0.mlp.down_proj.scales")
    assert "model.layers.0.mlp.down_proj.weight" not in names
    assert {"model.layers.29.self_attn.q_proj.qzeros", "model.norm.weight"} <= names
    assert qweight.shape == (1536, 576 // 8) and str(qweight.dtype) == "torch.int32"
    assert scales.shape == (1536 // GROUP, 576) and str(scales.dtype) == "torch.float16"


def test_awq_is_close_to_fp32_and_beats_round_to_nearest(perplexities):
    fp32, rtn, awq = perplexities["fp32"], perplexities["rtn"], perplexities["awq"]
    assert awq <= 1.12 * fp32
    assert awq <= rtn - 0.25 * (rtn - fp32)


def test_a_group_size_that_does_not_divide_a_linear_names_the_field_and_layer(
    float_model, tmp_path
):
    from lmdeploy.adapters.quantization.awq_model import TorchAwqModel
    from lmdeploy.application.quantization.auto_awq import auto_awq

    # No copy: the check runs before anything touches the weights.
    with pytest.raises(InvalidArgument, match=r"w_group_size: 128 does not divide model\.layers"):
        auto_awq(lambda: TorchAwqModel(float_model), _options(tmp_path / "out", w_group_size=128))
    assert not (tmp_path / "out").exists()


def test_the_default_public_dataset_is_refused_before_the_model_loads(tmp_path, capsys):
    from lmdeploy.infrastructure.entrypoint import main

    argv = ["lite", "auto_awq", MODEL, "--work-dir", str(tmp_path / "cli")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lmdeploy lite: error: calib_dataset: 'ptb' is a public dataset" in err
    assert not (tmp_path / "cli").exists()
