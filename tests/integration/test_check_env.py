"""`lmdeploy check_env` through the command line, as LMDeploy 0.6.5's prints and dumps it."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
import transformers

CHECK_ENV = [sys.executable, "-m", "lmdeploy.infrastructure.entrypoint", "check_env"]


def check_env(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CHECK_ENV, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("env")
    result = check_env("--dump-file", str(folder / "new" / "env.json"))
    return result, folder / "new" / "env.json"


def test_prints_the_environment_key_by_key(dumped):
    result, _ = dumped
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    keys = [line.split(": ", 1)[0] for line in lines if ": " in line]
    assert keys[:3] == ["sys.platform", "Python", "CUDA available"]
    for key in ("GCC", "PyTorch", "PyTorch compiling details", "LMDeploy", "fastapi", "triton"):
        assert key in keys
    assert f"sys.platform: {sys.platform}" in lines
    assert f"CUDA available: {torch.cuda.is_available()}" in lines
    assert f"transformers: {transformers.__version__}" in lines
    assert "gradio: " in result.stdout  # a version, or 'Not Found'


def test_dump_file_holds_the_same_information(dumped, tmp_path):
    result, path = dumped
    env = json.loads(path.read_text())
    assert env["transformers"] == transformers.__version__ and env["PyTorch"] == torch.__version__
    assert f"LMDeploy: {env['LMDeploy']}" in result.stdout
    pkl = tmp_path / "env.pkl"
    assert check_env("--dump-file", str(pkl)).returncode == 0
    assert pickle.loads(pkl.read_bytes())["sys.platform"] == sys.platform


def test_an_unknown_dump_format_is_refused_with_the_formats_named(tmp_path):
    result = check_env("--dump-file", str(tmp_path / "env.txt"))
    assert result.returncode == 2 and ".json" in result.stderr
    assert not (tmp_path / "env.txt").exists()
