"""lmdeploy_kernels/ imports only torch, triton and the standard library (import-linter cannot see it:
it lives outside src/, mapped to lmdeploy.kernels by pyproject)."""

import ast
import sys
from pathlib import Path

KERNELS = Path(__file__).resolve().parents[2] / "lmdeploy_kernels"
ALLOWED = {"torch", "triton", "__future__"} | set(sys.stdlib_module_names)


def test_kernels_import_only_torch_and_triton():
    bad = []
    for file in KERNELS.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            bad += [f"{file.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    assert KERNELS.is_dir() and not bad, bad
