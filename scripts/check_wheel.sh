#!/usr/bin/env bash
# What `pip install .` gives a user: builds the wheel from the working tree's files, checks that
# it carries every module and data file of src/ and lmdeploy_kernels/, installs it (not editable) into a
# fresh virtual environment and, from outside the repository, runs the CLI and a short
# generation on the default model. Dependencies come from .venv (scripts/setup.sh) through a
# .pth line, so no heavy package is installed twice; the wheel's declared dependencies are
# still checked against them.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
py=$repo/.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The files git would ship, copied: a stale build/ in the tree never hides a missing package.
mkdir "$work/tree"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$work/tree"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$work/tree"
wheel=$(ls "$work"/dist/lmdeploy-*.whl)

"$py" - "$wheel" "$work/tree" <<'PY'
import sys, zipfile
from pathlib import Path

wheel, tree = sys.argv[1], Path(sys.argv[2])
shipped = set(zipfile.ZipFile(wheel).namelist())
expected = {
    f"{dest}/{path.relative_to(tree / src).as_posix()}"
    for src, dest in (("src", "lmdeploy"), ("lmdeploy_kernels", "lmdeploy/kernels"))
    for path in (tree / src).rglob("*")
    if path.suffix in (".py", ".json", ".c", ".h") and "__pycache__" not in path.parts
}
missing = sorted(expected - shipped)
if missing:
    sys.exit(f"the wheel lacks {len(missing)} files of the tree, e.g. {missing[:8]}")
print(f"wheel: {Path(wheel).name} carries all {len(expected)} files of src/ and lmdeploy_kernels/")
PY

"$py" -m venv --without-pip "$work/venv"  # .venv's pip installs into it (seconds saved)
venv_py=$work/venv/bin/python
deps=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$venv_py" -c 'import sysconfig, sys; print(sys.argv[1], file=open(sysconfig.get_paths()["purelib"] + "/_setup_venv_deps.pth", "w"))' "$deps"
"$py" -m pip --python "$venv_py" install -q --no-deps --no-index "$wheel"

cd "$work"  # src/ and the repository's root are not importable from here
env -u PYTHONPATH "$work/venv/bin/lmdeploy" --help >/dev/null
env -u PYTHONPATH "$work/venv/bin/lmdeploy" list >/dev/null
env -u PYTHONPATH "$venv_py" - "$work/venv" <<'PY'
import sys
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement

import lmdeploy
from lmdeploy import GenerationConfig, pipeline

installed = Path(lmdeploy.__file__).resolve()
assert installed.is_relative_to(Path(sys.argv[1]).resolve()), f"imported from {installed}"
for req in map(Requirement, requires("lmdeploy")):
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        assert req.specifier.contains(version(req.name), prereleases=True), (req, version(req.name))
pipe = pipeline(None)
out = pipe(["Shanghai is"], gen_config=GenerationConfig(max_new_tokens=8))[0]
pipe.close()
assert out.generate_token_len > 0, out
print(f"installed wheel generates: {out.text!r}")

# Every C kernel builds from the installed sources (a missing header fell back to torch ops).
import os
import shutil

from lmdeploy.adapters.engines.pytorch.backends.cpu import build

if shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc"):
    csrc = Path(build.__file__).parent / "csrc"
    failed = [c.stem for c in sorted(csrc.glob("*.c")) if build.load(c.stem) is None]
    assert not failed, f"the installed C kernels {failed} do not build"
    print(f"installed wheel builds its {len(list(csrc.glob('*.c')))} C kernels")
PY
