"""C kernels for the CPU path, compiled on first use and called through ctypes.

The sources live in `csrc/`. Each is built once per machine with the system C compiler
(`-O3 -march=native -fopenmp`, plus a source's own `LMDEPLOY_CFLAGS:` line) into a cache
directory keyed by the source, the flags and the CPU's feature flags, then loaded with ctypes
(calls release the GIL). `-fopenmp` links `libgomp.so.1`, which resolves to the copy torch
already loaded, so the kernels share torch's OpenMP runtime and thread pools instead of
starting a second one.

When no compiler is found or the build fails, `load()` returns None once with a warning and
callers keep their torch path; `LMDEPLOY_CPU_KERNELS=0` disables the kernels (for A/B runs).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch  # noqa: F401  (loads torch's libgomp before any kernel library)

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "lmdeploy" / "cpu_kernels"


def _source_flags(text: str) -> list[str]:
    """A source's own extra flags, from its line `LMDEPLOY_CFLAGS: ...` (none without one)."""
    for line in text.splitlines():
        if "LMDEPLOY_CFLAGS:" in line:
            return line.split("LMDEPLOY_CFLAGS:", 1)[1].split()
    return []


def _build(source: Path, compiler: str, extra_flags: tuple[str, ...]) -> Path:
    text = source.read_text()
    flags = _FLAGS + _source_flags(text) + list(extra_flags)
    # The shared headers are part of every source: a changed prototype rebuilds them all.
    headers = "".join(path.read_text() for path in sorted(source.parent.glob("*.h")))
    digest = hashlib.sha256(
        (text + headers).encode() + " ".join(flags).encode() + _cpu_signature().encode()
    ).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent first uses never load a partial file.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        subprocess.run(
            [compiler, *flags, str(source), "-o", str(built), "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(built, target)
    return target


@functools.cache
def load(name: str, extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL | None:
    """The compiled library of `csrc/<name>.c`, or None (with one warning) if it can't be had.
    `extra_flags` go last (e.g. `-mno-avx512vnni`: tests build the AVX2 path of a kernel on a
    machine that has VNNI)."""
    if os.environ.get("LMDEPLOY_CPU_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found; the CPU path uses torch ops for %s", name)
        return None
    try:
        return ctypes.CDLL(str(_build(_CSRC / f"{name}.c", compiler, extra_flags)))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        logger.warning("could not build the CPU kernel %s (%s); using torch ops", name, detail)
        return None
