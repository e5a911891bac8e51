"""The `lmdeploy` command."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ...domain.errors import LMDeployError
from . import chat, check_env, listing, lite


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmdeploy", description="Deploy and serve large language models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    chat.add_parser(sub)
    check_env.add_parser(sub)
    listing.add_parser(sub)
    lite.add_parser(sub)
    try:
        from . import serve
    except ImportError:  # the HTTP extras are not installed
        serve = None
    if serve is not None:
        serve.add_parser(sub)
    return parser


def run(factories: Any, argv: list[str] | None = None) -> int:
    """Parse and run one command; `factories` (from the composition root) builds what it needs."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.factories = factories
    try:
        return args.func(args) or 0
    except (LMDeployError, ValueError, FileNotFoundError) as exc:
        print(f"lmdeploy {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
