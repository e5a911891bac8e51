"""The `lmdeploy` console script: the CLI adapter, handed the factories of the composition root."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from ..adapters.cli.main import run
from . import factory


def main(argv: list[str] | None = None) -> int:
    return run(SimpleNamespace(pipeline=factory.pipeline, build_container=factory.build_container), argv)


if __name__ == "__main__":
    sys.exit(main())
