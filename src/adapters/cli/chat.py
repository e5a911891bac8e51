"""`lmdeploy chat [MODEL]`: a terminal conversation that keeps its history; `exit` quits."""

from __future__ import annotations

import argparse
import sys

from .options import (
    add_engine_options,
    add_sampling_options,
    chat_template_from,
    engine_config_from,
    gen_config_from,
)


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


def run(args: argparse.Namespace) -> int:
    template = chat_template_from(args)
    gen_config = gen_config_from(args)
    pipe = args.factories.pipeline(
        args.model_path,
        backend_config=engine_config_from(args),
        chat_template_config=template,
        log_level=args.log_level,
    )
    messages = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    print(f"chatting with {pipe.model_name}; type 'exit' to quit", file=sys.stderr)
    try:
        while True:
            try:
                text = input("\ndouble enter to end input >>> " if interactive else "")
            except EOFError:
                break
            if text.strip() == "exit":
                break
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            reply = []
            for out in pipe.stream_infer([messages], gen_config=gen_config):
                print(out.text, end="", flush=True)
                reply.append(out.text)
            print()
            messages.append({"role": "assistant", "content": "".join(reply)})
    finally:
        pipe.close()
    return 0
