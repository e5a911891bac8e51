"""`lmdeploy lite ...`: offline quantisation commands (LMDeploy 0.6.5's flags)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from ...application.quantization.auto_awq import AutoAwqOptions
from ...application.quantization.calib_data import PUBLIC_DATASETS
from ...application.quantization.smooth_quant import QUANT_DTYPES, SmoothQuantOptions

Options = TypeVar("Options", AutoAwqOptions, SmoothQuantOptions)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    lite = subparsers.add_parser("lite", help="compress a model: quantise its weights offline")
    commands = lite.add_subparsers(dest="lite_command", required=True)
    _add_smooth_quant(commands)
    _add_auto_awq(commands)


def _add_calibration_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the model to quantise: a local HF directory or .gguf file")
    parser.add_argument("--work-dir", default="./work_dir", help="where the result is written")
    parser.add_argument(
        "--calib-dataset",
        default="ptb",
        help='a local .txt file, or a .jsonl file of {"text": ...} lines; the public sets '
        f"({', '.join(PUBLIC_DATASETS)}) need the network, which this build does not use",
    )
    parser.add_argument("--calib-samples", type=int, default=128, help="calibration windows")
    parser.add_argument("--calib-seqlen", type=int, default=2048, help="tokens in a window")
    parser.add_argument("--batch-size", type=int, default=1, help="windows a forward pass")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float16", "bfloat16", "float32"],
        help="the float type to calibrate in and of the unquantised weights "
        "(auto: float16 on a GPU, float32 on a CPU)",
    )
    parser.add_argument(
        "--device", default="auto", help="cuda or cpu (auto: cuda when there is one)"
    )


def _add_smooth_quant(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "smooth_quant", help="W8A8 quantisation by SmoothQuant (int8, or fp8 e4m3 for Hopper)"
    )
    _add_calibration_flags(parser)
    parser.add_argument(
        "--search-scale", action="store_true", help="search the smoothing ratio (not supported)"
    )
    parser.add_argument(
        "--quant-dtype",
        default="int8",
        choices=sorted(QUANT_DTYPES),
        help="the 8-bit type of weights and activations",
    )
    parser.set_defaults(func=run_smooth_quant)


def _add_auto_awq(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "auto_awq", help="4-bit weights by AWQ, saved as an AutoAWQ gemm checkpoint"
    )
    _add_calibration_flags(parser)
    parser.add_argument(
        "--search-scale",
        action="store_true",
        help="search each layer's scale ratio on a grid (slower, more accurate); "
        "without it the ratio is 0.5",
    )
    parser.add_argument("--w-bits", type=int, default=4, help="bits of a weight (4)")
    parser.add_argument(
        "--w-sym",
        action="store_true",
        help="symmetric quantisation (not supported: AWQ gemm has zeros)",
    )
    parser.add_argument(
        "--w-group-size",
        type=int,
        default=128,
        help="input features sharing a scale and zero point; must divide every linear's inputs",
    )
    parser.set_defaults(func=run_auto_awq)


def _progress(desc: str, unit: str):
    def wrap(iterable: Any, total: int) -> Any:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit)

    return wrap


def _options(cls: type[Options], args: argparse.Namespace) -> Options:
    """The use case's options from the parsed flags of the same names."""
    return cls(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    )


def run_smooth_quant(args: argparse.Namespace) -> int:
    options = _options(SmoothQuantOptions, args)
    work_dir = args.factories.smooth_quant(
        args.model, options, args.device, _progress("calibrating", "batch")
    )
    print(f"saved the {options.quant_dtype} W8A8 checkpoint to {work_dir}")
    return 0


def run_auto_awq(args: argparse.Namespace) -> int:
    options = _options(AutoAwqOptions, args)
    work_dir = args.factories.auto_awq(
        args.model, options, args.device, _progress("quantising", "layer")
    )
    print(f"saved the {options.w_bits}-bit AWQ checkpoint to {work_dir}")
    return 0
