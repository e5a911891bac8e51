"""`lmdeploy serve api_server [MODEL]` and `lmdeploy serve api_client URL`."""

from __future__ import annotations

import argparse

from . import serve_gradio
from .options import add_engine_options, chat_template_from, engine_config_from


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serve a model over HTTP")
    sub = serve.add_subparsers(dest="serve_command", required=True)

    api = sub.add_parser("api_server", help="the OpenAI-compatible server")
    api.add_argument(
        "model_path",
        nargs="?",
        default=None,
        help="model path, hub id or .gguf (default: the embedded SmolLM2-135M-Instruct)",
    )
    api.add_argument("--server-name", default="0.0.0.0")
    api.add_argument("--server-port", type=int, default=23333)
    api.add_argument(
        "--api-keys", nargs="*", default=None, help="accepted API keys (Bearer tokens)"
    )
    api.add_argument(
        "--ssl", action="store_true", help="serve HTTPS with SSL_KEYFILE and SSL_CERTFILE"
    )
    api.add_argument("--model-name", default=None, help="the name /v1/models reports")
    api.add_argument(
        "--max-log-len",
        type=int,
        default=None,
        help="log at most this many prompt characters and token ids (INFO)",
    )
    api.add_argument("--proxy-url", default=None, help="register with this proxy at start-up")
    add_engine_options(api)
    api.set_defaults(func=run_api_server, log_level="ERROR")

    proxy = sub.add_parser("proxy", help="distribute requests over api_server nodes")
    proxy.add_argument("--server-name", default="0.0.0.0")
    proxy.add_argument("--server-port", type=int, default=8000)
    proxy.add_argument(
        "--strategy",
        choices=["random", "min_expected_latency", "min_observed_latency"],
        default="min_expected_latency",
        help="how a request's node is chosen",
    )
    proxy.add_argument(
        "--api-keys", nargs="*", default=None, help="keys clients must send (Bearer tokens)"
    )
    proxy.add_argument(
        "--ssl", action="store_true", help="serve HTTPS with SSL_KEYFILE and SSL_CERTFILE"
    )
    proxy.add_argument(
        "--node-api-key",
        default=None,
        help="the key to send to the nodes (default: pass on the client's own key)",
    )
    proxy.add_argument(
        "--log-level", default="WARNING", choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
    )
    proxy.set_defaults(func=run_proxy)

    client = sub.add_parser("api_client", help="chat in the terminal against a running api_server")
    client.add_argument("api_server_url")
    client.add_argument("--api-key", default=None)
    client.add_argument("--session-id", type=int, default=1)
    client.set_defaults(func=run_api_client)

    serve_gradio.add_parser(sub)


def run_api_server(args: argparse.Namespace) -> int:
    template = chat_template_from(args)
    args.factories.run_api_server(
        args.model_path,
        backend=args.backend,
        backend_config=engine_config_from(args),
        chat_template_config=template,
        server_name=args.server_name,
        server_port=args.server_port,
        api_keys=args.api_keys,
        ssl=args.ssl,
        model_name=args.model_name,
        log_level=args.log_level,
        proxy_url=args.proxy_url,
        max_log_len=args.max_log_len,
    )
    return 0


def run_proxy(args: argparse.Namespace) -> int:
    args.factories.run_proxy(
        server_name=args.server_name,
        server_port=args.server_port,
        strategy=args.strategy,
        api_keys=args.api_keys,
        ssl=args.ssl,
        node_api_key=args.node_api_key,
        log_level=args.log_level,
    )
    return 0


def run_api_client(args: argparse.Namespace) -> int:
    from ..http.api_client import APIClient

    client = APIClient(args.api_server_url, api_key=args.api_key)
    while True:
        try:
            text = input("\ndouble enter to end input >>> ")
        except EOFError:
            break
        if text.strip() == "exit":
            break
        for item in client.chat_interactive_v1(
            text, session_id=args.session_id, interactive_mode=True, stream=True
        ):
            print(item.get("text", ""), end="", flush=True)
        print()
    client.chat_interactive_v1("", session_id=args.session_id, interactive_mode=False)
    return 0
