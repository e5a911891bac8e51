"""Calibration text: a local .txt or .jsonl file cut into token windows.

LMDeploy 0.6.5 downloads its calibration sets by name (wikitext2, c4, ptb, pileval); this build
runs where there is no network, so a name is refused with what to pass instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ...domain.errors import InvalidArgument

PUBLIC_DATASETS = ("wikitext2", "c4", "ptb", "pileval")


def read_calib_texts(calib_dataset: str) -> list[str]:
    """The documents of a local calibration file: a .jsonl file's `text` fields (one JSON
    object a line), or any other file's whole text as one document."""
    path = Path(calib_dataset)
    if calib_dataset in PUBLIC_DATASETS and not path.exists():
        raise InvalidArgument(
            "calib_dataset",
            f"'{calib_dataset}' is a public dataset that must be downloaded, and this build "
            "works offline; pass a local .txt or .jsonl file instead "
            "(e.g. --calib-dataset tests/data/calib.txt)",
        )
    if not path.is_file():
        raise InvalidArgument(
            "calib_dataset", f"{calib_dataset} is not a file; pass a local .txt or .jsonl file"
        )
    if path.suffix == ".jsonl":
        texts = [_jsonl_text(path, i, line) for i, line in _lines(path)]
    else:
        texts = [path.read_text(encoding="utf-8")]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise InvalidArgument("calib_dataset", f"{calib_dataset} holds no text")
    return texts


def _lines(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(i + 1, line) for i, line in enumerate(lines) if line.strip()]


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            "calib_dataset", f"{path}:{number} is not JSON ({exc.msg}); write one object a line"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise InvalidArgument(
            "calib_dataset", f'{path}:{number} has no string "text" field; write {{"text": ...}}'
        )
    return record["text"]


def calib_samples(
    texts: list[str], encode: Callable[[str], list[int]], num_samples: int, seqlen: int
) -> list[list[int]]:
    """`num_samples` windows of `seqlen` tokens, evenly spaced over the concatenated texts.
    A text shorter than `num_samples * seqlen` gives overlapping windows (a short file still
    calibrates every channel); one shorter than `seqlen` gives a single, shorter sample."""
    if num_samples < 1 or seqlen < 1:
        raise InvalidArgument(
            "calib_samples",
            f"calib_samples and calib_seqlen must be >= 1, got {num_samples} and {seqlen}",
        )
    ids = [token for text in texts for token in encode(text)]
    if len(ids) <= seqlen:
        return [ids]
    last_start = len(ids) - seqlen
    count = min(num_samples, last_start + 1)
    starts = [round(i * last_start / max(count - 1, 1)) for i in range(count)]
    return [ids[start : start + seqlen] for start in starts]


@dataclass(frozen=True)
class CalibrationOptions:
    """What every `lmdeploy lite` calibration takes (0.6.5's flags); each method adds its own."""

    work_dir: str = "./work_dir"
    calib_dataset: str = "ptb"
    calib_samples: int = 128
    calib_seqlen: int = 2048
    batch_size: int = 1
    search_scale: bool = False
    dtype: str = "auto"

    def validate_calibration(self) -> None:
        if self.batch_size < 1:
            raise InvalidArgument("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.dtype not in ("auto", "float16", "bfloat16", "float32"):
            raise InvalidArgument(
                "dtype", f"'{self.dtype}' is not one of auto, float16, bfloat16, float32"
            )
