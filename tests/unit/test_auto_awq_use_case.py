"""`lite auto_awq`'s use case: option checks, the alpha grid, step order, the saved config."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmdeploy.application.quantization.auto_awq import AutoAwqOptions, AwqPlan, auto_awq
from lmdeploy.domain.errors import InvalidArgument

CALIB = Path(__file__).parents[1] / "data" / "calib.txt"


class FakeModel:
    """Records what the use case asked of it; words are its tokens."""

    num_layers = 3

    def __init__(self, divides: bool = True) -> None:
        self.calls: list[tuple] = []
        self.divides = divides

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def check_group_size(self, group_size: int) -> None:
        self.calls.append(("check", group_size))
        if not self.divides:
            raise InvalidArgument("w_group_size", "does not divide model.layers.0.mlp.up_proj")

    def start(self, batches: list[list[list[int]]]) -> None:
        self.calls.append(("start", [len(b) for b in batches], len(batches[0][0])))

    def quantize_layer(self, index: int, plan: AwqPlan) -> None:
        self.calls.append(("layer", index, plan))

    def save(self, work_dir: Path, quantization_config: dict) -> None:
        self.calls.append(("save", work_dir, quantization_config))


def options(tmp_path: Path, **fields) -> AutoAwqOptions:
    base = dict(
        work_dir=str(tmp_path / "out"),
        calib_dataset=str(CALIB),
        calib_samples=5,
        calib_seqlen=16,
        batch_size=2,
    )
    return AutoAwqOptions(**{**base, **fields})


def test_layers_are_quantised_in_order_and_the_config_says_awq_gemm(tmp_path):
    model = FakeModel()
    seen = []

    def progress(layers, total):
        seen.append(total)
        return layers

    work_dir = auto_awq(lambda: model, options(tmp_path, w_group_size=64), progress)
    assert work_dir == tmp_path / "out"
    assert model.calls[0] == ("check", 64)
    assert model.calls[1] == ("start", [2, 2, 1], 16)
    plan = AwqPlan((0.5,), 64, 20)
    assert model.calls[2:5] == [("layer", i, plan) for i in range(3)]
    assert model.calls[5] == (
        "save",
        work_dir,
        {"quant_method": "awq", "version": "gemm", "bits": 4, "group_size": 64, "zero_point": True},
    )
    assert seen == [3]


def test_search_scale_tries_a_grid_of_alphas_from_zero(tmp_path):
    model = FakeModel()
    auto_awq(lambda: model, options(tmp_path, search_scale=True, search_grid=4, clip_grid=0))
    plan = model.calls[2][2]
    assert plan.alphas == (0.0, 0.25, 0.5, 0.75) and plan.clip_grid == 0


@pytest.mark.parametrize(
    ("fields", "argument"),
    [
        ({"w_bits": 8}, "w_bits"),
        ({"w_sym": True}, "w_sym"),
        ({"w_group_size": 100}, "w_group_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"calib_dataset": "wikitext2"}, "calib_dataset"),
    ],
)
def test_bad_options_fail_before_the_model_opens(tmp_path, fields, argument):
    def never():
        raise AssertionError("the model must not be opened")

    with pytest.raises(InvalidArgument) as info:
        auto_awq(never, options(tmp_path, **fields))
    assert info.value.argument == argument


def test_a_group_size_the_model_cannot_take_fails_before_calibration(tmp_path):
    model = FakeModel(divides=False)
    with pytest.raises(InvalidArgument, match="w_group_size.*up_proj"):
        auto_awq(lambda: model, options(tmp_path))
    assert model.calls == [("check", 128)]
