"""`lite smooth_quant`'s use case: calibration files, windows, option checks, step order."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmdeploy.application.quantization.calib_data import calib_samples, read_calib_texts
from lmdeploy.application.quantization.smooth_quant import SmoothQuantOptions, smooth_quant
from lmdeploy.domain.errors import InvalidArgument

CALIB = Path(__file__).parents[1] / "data" / "calib.txt"


class FakeModel:
    """Records what the use case asked of it; words are its tokens."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def observe(self, batch: list[list[int]]) -> None:
        self.calls.append(("observe", len(batch), len(batch[0])))

    def smooth(self, alpha: float) -> None:
        self.calls.append(("smooth", alpha))

    def quantize(self, quant_dtype: str) -> None:
        self.calls.append(("quantize", quant_dtype))

    def save(self, work_dir: Path) -> None:
        self.calls.append(("save", work_dir))


def test_public_dataset_names_say_they_need_the_network():
    with pytest.raises(InvalidArgument, match="calib_dataset.*offline.*local .txt or .jsonl"):
        read_calib_texts("ptb")


def test_jsonl_reads_text_fields_and_names_a_bad_line(tmp_path):
    good = tmp_path / "c.jsonl"
    good.write_text('{"text": "one two"}\n\n{"text": "three"}\n')
    assert read_calib_texts(str(good)) == ["one two", "three"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(InvalidArgument, match=r"bad.jsonl:2 has no string \"text\""):
        read_calib_texts(str(bad))


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="is not a file"):
        read_calib_texts(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InvalidArgument, match="holds no text"):
        read_calib_texts(str(tmp_path / "empty.txt"))


def test_windows_are_evenly_spaced_and_overlap_on_short_text():
    ids = list(range(100))
    windows = calib_samples(["x"], lambda _: ids, 4, 40)
    assert [w[0] for w in windows] == [0, 20, 40, 60] and all(len(w) == 40 for w in windows)
    assert calib_samples(["x"], lambda _: ids, 2, 500) == [ids]
    assert len(calib_samples(["x"], lambda _: ids[:12], 50, 10)) == 3  # only 3 distinct starts


def test_use_case_calibrates_then_smooths_quantises_and_saves(tmp_path):
    model = FakeModel()
    options = SmoothQuantOptions(
        work_dir=str(tmp_path),
        calib_dataset=str(CALIB),
        calib_samples=5,
        calib_seqlen=64,
        batch_size=2,
        quant_dtype="fp8",
    )
    seen = []
    out = smooth_quant(lambda: model, options, lambda it, total: seen.append(total) or it)
    assert out == tmp_path and seen == [3]
    assert model.calls == [
        ("observe", 2, 64),
        ("observe", 2, 64),
        ("observe", 1, 64),
        ("smooth", 0.5),
        ("quantize", "float8_e4m3fn"),
        ("save", tmp_path),
    ]


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("quant_dtype", "int4", "quant_dtype"),
        ("search_scale", True, "search_scale.*drop --search-scale"),
        ("batch_size", 0, "batch_size"),
        ("calib_dataset", "c4", "calib_dataset"),
    ],
)
def test_bad_options_fail_before_the_model_loads(field, value, match):
    options = SmoothQuantOptions(**{"calib_dataset": str(CALIB), field: value})

    def never_open():
        raise AssertionError("the model was opened")

    with pytest.raises(InvalidArgument, match=match):
        smooth_quant(never_open, options)


def test_cli_refuses_a_public_dataset_with_a_nonzero_exit(capsys, tmp_path):
    from lmdeploy.infrastructure.entrypoint import main

    argv = ["lite", "smooth_quant", "SmolLM2-135M-Instruct", "--work-dir", str(tmp_path)]
    assert main(argv) == 2  # the default calibration set is ptb
    err = capsys.readouterr().err
    assert "lmdeploy lite: error: calib_dataset: 'ptb' is a public dataset" in err
    assert not any(tmp_path.iterdir())
