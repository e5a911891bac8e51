"""The `lmdeploy` console script: the CLI adapter, handed the factories of the composition root."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from ..adapters.cli.main import run
from . import factory, proxy_server, quantization, server, webui


def main(argv: list[str] | None = None) -> int:
    factories = SimpleNamespace(
        pipeline=factory.pipeline,
        build_container=factory.build_container,
        run_api_server=server.run_api_server,
        run_gradio=webui.run_gradio,
        run_proxy=proxy_server.run_proxy,
        smooth_quant=quantization.smooth_quant,
        auto_awq=quantization.auto_awq,
    )
    return run(factories, argv)


if __name__ == "__main__":
    sys.exit(main())
