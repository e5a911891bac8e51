"""`lmdeploy chat [MODEL]`: a terminal conversation that keeps its history, as LMDeploy 0.6.5's.

A prompt is the lines typed until an empty one (double Enter; `!!` for codellama). A first line
`exit` quits and `end` starts a new conversation, at once: typed while a reply streams, they
wait in the terminal's input and act when the reply is done."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ...application.chat_templates import best_match_model
from .options import (
    add_engine_options,
    add_sampling_options,
    chat_template_from,
    engine_config_from,
    gen_config_from,
)

COMMANDS = ("exit", "end")
SESSION_FULL = "WARNING: exceed session max length. Please end the session."  # 0.6.5's words


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="chat with a model in the terminal")
    parser.add_argument(
        "model_path",
        nargs="?",
        default=None,
        help="model path, hub id or .gguf (default: the embedded SmolLM2-135M-Instruct)",
    )
    add_engine_options(parser)
    add_sampling_options(parser)
    parser.add_argument("--system", default=None, help="a system prompt for the conversation")
    parser.set_defaults(func=run)


def read_prompt(template_name: str, read_line: Callable[[], str] = input) -> str | None:
    """One prompt as 0.6.5 reads it, or a command (`exit`, `end`); None at the end of input."""
    if template_name == "codellama":
        print("\nenter !! to end the input >>>\n", end="", flush=True)
        sentinel = "!!"
    else:
        print("\ndouble enter to end input >>> ", end="", flush=True)
        sentinel = ""
    lines: list[str] = []
    while True:
        try:
            line = read_line()
        except EOFError:
            return "\n".join(lines) if lines else None
        if not lines and line.strip() in COMMANDS:
            return line.strip()
        if line == sentinel:
            return "\n".join(lines)
        lines.append(line)


def stream_reply(
    pipe: Any, messages: list[dict[str, str]], gen_config: Any, adapter_name: str | None = None
) -> str | None:
    """Prints the reply as it streams and returns it; None when the conversation no longer
    fits the session (nothing was generated)."""
    reply, last = [], None
    for last in pipe.stream_infer([messages], gen_config=gen_config, adapter_name=adapter_name):
        print(last.text, end="", flush=True)
        reply.append(last.text)
    if last is not None and last.finish_reason == "length" and last.generate_token_len == 0:
        return None
    print()
    return "".join(reply)


def run(args: argparse.Namespace) -> int:
    template = chat_template_from(args)
    template_name = template.model_name if template else best_match_model(args.model_path or "")
    gen_config = gen_config_from(args)
    backend_config = engine_config_from(args)
    # The conversation runs with the first adapter given: the prompt loop has no way to pick one.
    adapter = next(iter(getattr(backend_config, "adapters", None) or {}), None)
    pipe = args.factories.pipeline(
        args.model_path,
        backend_config=backend_config,
        chat_template_config=template,
        log_level=args.log_level,
    )
    opening = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(opening)
    print(f"chatting with {pipe.model_name}; 'exit' quits, 'end' starts over", file=sys.stderr)
    try:
        while True:
            prompt = read_prompt(template_name)
            if prompt is None or prompt == "exit":
                break
            if prompt == "end":
                messages = list(opening)
                continue
            if not prompt.strip():
                continue
            turn = [*messages, {"role": "user", "content": prompt}]
            reply = stream_reply(pipe, turn, gen_config, adapter)
            if reply is None:
                print(SESSION_FULL)  # the turn is dropped; `end` makes room
                continue
            messages = [*turn, {"role": "assistant", "content": reply}]
    finally:
        pipe.close()
    return 0
