"""`lmdeploy serve gradio [MODEL_OR_URL]`: the web UI, with LMDeploy 0.6.5's flags."""

from __future__ import annotations

import argparse

from .options import add_engine_options, chat_template_from, engine_config_from


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("gradio", help="chat with a model in the browser")
    parser.add_argument(
        "model_path_or_server",
        nargs="?",
        default=None,
        help="a model (path, hub id or .gguf; default: the embedded SmolLM2-135M-Instruct) "
        "run in this process, or a running api_server's URL, e.g. http://0.0.0.0:23333",
    )
    # 0.6.5's documentation spells these both ways.
    parser.add_argument("--server-name", "--server_name", default="0.0.0.0")
    parser.add_argument("--server-port", "--server_port", type=int, default=6006)
    parser.add_argument(
        "--share", action="store_true", help="also serve through a public gradio.live link"
    )
    parser.add_argument("--model-name", default=None, help="the name the chat shows")
    parser.add_argument(
        "--max-log-len",
        type=int,
        default=None,
        help="log at most this many prompt characters and token ids (INFO)",
    )
    add_engine_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.factories.run_gradio(
        args.model_path_or_server,
        server_name=args.server_name,
        server_port=args.server_port,
        backend=args.backend,
        backend_config=engine_config_from(args),
        chat_template_config=chat_template_from(args),
        model_name=args.model_name,
        share=args.share,
        max_log_len=args.max_log_len,
        log_level=args.log_level,
    )
    return 0
