"""Steps of cli.feature: the `lmdeploy` command in a subprocess."""

import shlex
import subprocess
import sys

from pytest_bdd import parsers, scenarios, then, when

scenarios("cli.feature")


@when(parsers.parse('I run "{command}"'), target_fixture="result")
def run_command(command):
    program, *args = shlex.split(command)
    assert program == "lmdeploy"
    entry = [sys.executable, "-m", "lmdeploy.infrastructure.entrypoint"]
    return subprocess.run([*entry, *args], capture_output=True, text=True, timeout=300)


@then("it prints the platform, Python, PyTorch, CUDA availability and the LMDeploy version")
def prints_environment(result):
    assert result.returncode == 0, result.stderr
    keys = {line.split(": ", 1)[0] for line in result.stdout.splitlines() if ": " in line}
    assert {"sys.platform", "Python", "PyTorch", "CUDA available", "LMDeploy"} <= keys
