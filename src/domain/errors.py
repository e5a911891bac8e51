"""Errors the domain raises; entry points map them to HTTP codes, CLI messages and exceptions."""

from __future__ import annotations


class LMDeployError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidArgument(LMDeployError, ValueError):
    """A caller passed a value outside what an argument accepts."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.reason = message

    def __reduce__(self):
        # Subclasses take other arguments: rebuild from the fields, not from __init__, so the
        # error crosses a process boundary (an engine process's start-up) with its type.
        return (_rebuild_invalid_argument, (type(self), str(self), self.__dict__))


def _rebuild_invalid_argument(cls: type, text: str, fields: dict) -> InvalidArgument:
    error = cls.__new__(cls)
    Exception.__init__(error, text)
    error.__dict__.update(fields)
    return error


class InvalidConfig(InvalidArgument, AssertionError):
    """A config field out of range. LMDeploy 0.6.5 asserts its configs, so code written for it
    catches AssertionError; it is an InvalidArgument (a ValueError) too."""

    @classmethod
    def of(cls, exc: InvalidArgument) -> InvalidConfig:
        return exc if isinstance(exc, cls) else cls(exc.argument, exc.reason)


class PromptTooLong(InvalidArgument):
    """The prompt does not fit the session length."""

    def __init__(self, num_tokens: int, session_len: int) -> None:
        super().__init__(
            "prompt",
            f"the prompt has {num_tokens} tokens, which leaves no room in session_len="
            f"{session_len}; shorten the prompt or raise session_len",
        )
        self.num_tokens = num_tokens
        self.session_len = session_len


class UnknownAdapter(InvalidArgument):
    """A request named a LoRA adapter the engine was not started with."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(
            "adapter_name",
            f"no LoRA adapter named {name!r}; this engine serves {list(known) or 'none'} "
            "(start it with adapters={'name': 'path/to/peft_dir'} / --adapters name=path)",
        )
        self.name = name


class OutOfBlocks(LMDeployError):
    """A sequence needs more KV blocks than the whole cache holds."""


class ChatTurnFailed(LMDeployError):
    """A chat turn could not run (the session is full, the server refused it)."""


class EngineFailed(RuntimeError):
    """The engine cannot run another step (a tensor-parallel rank died): every request in
    flight ends with this error and the server reports itself unhealthy."""
