"""`lmdeploy check_env`: the environment as LMDeploy 0.6.5 prints it, `key: value` a line, and
optionally dumped to a .json, .yml/.yaml or .pkl file."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import subprocess
import sys
from collections import defaultdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Versions 0.6.5 adds after the framework's; 'Not Found' where one is not installed.
EXTRA_PACKAGES = ("transformers", "gradio", "fastapi", "pydantic", "triton")
DUMP_FORMATS = (".json", ".yml", ".yaml", ".pkl")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check_env", help="print the environment information")
    parser.add_argument(
        "--dump-file",
        default=None,
        help="also save the information to this file: .json, .yml/.yaml or .pkl",
    )
    parser.set_defaults(func=run)


def _command_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cuda_info(torch: Any) -> dict[str, str]:
    info: dict[str, str] = {}
    devices: dict[str, list[str]] = defaultdict(list)
    for i in range(torch.cuda.device_count()):
        devices[torch.cuda.get_device_name(i)].append(str(i))
    for name, ids in devices.items():
        info[f"GPU {','.join(ids)}"] = name
    from torch.utils.cpp_extension import CUDA_HOME

    info["CUDA_HOME"] = str(CUDA_HOME)
    if CUDA_HOME and os.path.isdir(CUDA_HOME):
        nvcc = _command_output([os.path.join(CUDA_HOME, "bin", "nvcc"), "-V"])
        info["NVCC"] = nvcc.splitlines()[-1] if nvcc else "Not Available"
    return info


def _package_version(name: str) -> str:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:
        return "Not Found"


def collect_env() -> dict[str, str]:
    """The same keys, in the same order, as 0.6.5's `check_env` (MMEngine's and OpenCV's aside)."""
    import torch

    env = {
        "sys.platform": sys.platform,
        "Python": sys.version.replace("\n", ""),
        "CUDA available": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        env.update(_cuda_info(torch))
    gcc = _command_output(["gcc", "--version"])
    env["GCC"] = gcc.splitlines()[0] if gcc else "n/a"
    env["PyTorch"] = torch.__version__
    env["PyTorch compiling details"] = torch.__config__.show()
    try:
        env["TorchVision"] = version("torchvision")
    except PackageNotFoundError:
        pass
    env["LMDeploy"] = version("lmdeploy")
    env.update({name: _package_version(name) for name in EXTRA_PACKAGES})
    if sys.platform.startswith("linux"):
        topology = _command_output(["nvidia-smi", "topo", "-m"])
        if topology:
            env["NVIDIA Topology"] = "\n" + topology
    return env


def check_dump_file(path: Path) -> None:
    if path.suffix not in DUMP_FORMATS:
        raise ValueError(
            f"--dump-file {path} has an unknown format; name a {', '.join(DUMP_FORMATS)} file"
        )


def dump(env: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(env, indent=4))
    elif path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(env))
    else:
        import yaml  # PyYAML comes with transformers

        path.write_text(yaml.safe_dump(env, sort_keys=False, allow_unicode=True))


def run(args: argparse.Namespace) -> int:
    dump_file = Path(args.dump_file) if args.dump_file else None
    if dump_file is not None:
        check_dump_file(dump_file)  # before the slow part
    env = collect_env()
    for key, value in env.items():
        print(f"{key}: {value}")
    if dump_file is not None:
        dump(env, dump_file)
    return 0
