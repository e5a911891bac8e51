"""The api_server's engine in a process of its own (as vLLM's and SGLang's servers run theirs).

The front (this process) keeps HTTP, templates, tokenizing and detokenizing; the engine
process loads the model and runs the engine loop. `attach` starts that process, waits for
the model to load, and points the front's container at it: `engine` becomes a
`RemoteEngine`, `model_facts` what the engine reported, and no weight is loaded here.
`LMDEPLOY_ENGINE_PROCESS=0` keeps the engine in the server's process; a vision-language
model always stays there (its images are encoded into tensors on the engine's device).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
from dataclasses import dataclass
from typing import Any

from dependency_injector import providers

from ..adapters.ipc import wire
from ..adapters.ipc.engine_client import RemoteEngine
from ..adapters.ipc.engine_host import EngineHost
from ..adapters.loaders.safetensors_dir import read_config
from ..adapters.vision.registry import is_vision_model
from ..domain.errors import LMDeployError
from .logging import setup_logging

logger = logging.getLogger("lmdeploy.engine_process")

SWITCH = "LMDEPLOY_ENGINE_PROCESS"


class EngineStartFailed(LMDeployError):
    """The engine process could not load the model."""


@dataclass(frozen=True)
class EngineProcessArgs:
    """What `build_container` takes, for the engine process to build the same engine."""

    container_args: dict[str, Any]
    log_level: str


def wanted(container) -> bool:
    """Whether this server's engine runs in its own process."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    source = container.source()
    if source.kind == "gguf" or source.path is None:
        return True
    return not is_vision_model(read_config(source.path))


def attach(container, args: EngineProcessArgs) -> None:
    """Start the engine process and wire the front's container to it."""
    engine, facts = start(args)

    def remote_engine():
        yield engine
        engine.stop()

    container.model_facts.override(providers.Object(facts))
    container.engine.override(providers.Resource(remote_engine))
    container.vision.override(providers.Object(None))


def start(args: EngineProcessArgs) -> tuple[RemoteEngine, wire.ModelFacts]:
    """The engine process, once its model has loaded; its start-up error, raised here."""
    ctx = multiprocessing.get_context("spawn")  # a fork would copy a CUDA-less, threaded parent
    commands_in, commands_out = ctx.Pipe(duplex=False)
    replies_in, replies_out = ctx.Pipe(duplex=False)
    # Not a daemon: a tensor-parallel engine starts its own worker processes.
    process = ctx.Process(
        target=engine_main, args=(args, commands_in, replies_out), name="lmdeploy-engine"
    )
    process.start()
    commands_in.close()  # this process's copies of the child's ends: so each side sees EOF
    replies_out.close()
    while not replies_in.poll(0.5):
        if not process.is_alive():
            raise EngineStartFailed(
                f"the engine process exited with code {process.exitcode} while loading the "
                "model (its log above says why)"
            )
    message = wire.loads(replies_in.recv_bytes())
    if message[0] == wire.START_FAILED:
        process.join(30)
        raise message[1]
    return RemoteEngine(process, commands_out, replies_in), message[1]


def engine_main(args: EngineProcessArgs, commands, replies) -> None:
    """The engine process: build the engine as the server would, then serve the pipe."""
    from .factory import build_container  # the factory imports the pipeline; not at import

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the front, which stops us
    setup_logging(args.log_level)
    try:
        container = build_container(**args.container_args)
        container.init_resources()
        engine, grammar, facts = container.engine(), container.grammar(), container.model_facts()
    except BaseException as exc:
        if not isinstance(exc, (LMDeployError, ValueError, FileNotFoundError)):
            logger.exception("the engine could not start")
        replies.send_bytes(wire.dumps((wire.START_FAILED, _portable(exc))))
        return
    replies.send_bytes(wire.dumps((wire.READY, facts)))
    try:
        EngineHost(engine, commands, replies, grammar).serve()
    finally:
        container.shutdown_resources()


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives a pickle round trip (its type then reaches the front's CLI
    handling); else an EngineStartFailed with its text."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return EngineStartFailed(f"{type(exc).__name__}: {exc}")
