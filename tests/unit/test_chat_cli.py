"""`lmdeploy chat`'s input as LMDeploy 0.6.5 reads it: lines until an empty one."""

import pytest

from lmdeploy.adapters.cli.chat import read_prompt


def reader(*lines: str):
    pending = iter(lines)

    def read_line() -> str:
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    return read_line


@pytest.mark.parametrize(
    "template, lines, prompt",
    [
        ("base", ("Hello", "world", "", "next"), "Hello\nworld"),
        ("base", ("exit",), "exit"),
        ("base", (" end ",), "end"),
        ("base", ("say", "exit", ""), "say\nexit"),  # a command only on the first line
        ("codellama", ("def f():", "", "    pass", "!!"), "def f():\n\n    pass"),
        ("base", ("unfinished",), "unfinished"),  # the end of input submits what came
        ("base", (), None),
    ],
)
def test_read_prompt(template, lines, prompt, capsys):
    assert read_prompt(template, reader(*lines)) == prompt
    shown = capsys.readouterr().out
    expected = "enter !! to end the input >>>\n" if template == "codellama" else ">>> "
    assert shown.startswith("\n") and shown.endswith(expected)
