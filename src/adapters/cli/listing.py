"""`lmdeploy list`: the names of the built-in chat templates."""

from __future__ import annotations

import argparse

from ...application.chat_templates import MODELS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list the built-in chat template names")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("The supported chat template names are:")
    for name in sorted(MODELS.module_dict):
        print(name)
    return 0
