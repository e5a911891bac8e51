"""Documented import path `lmdeploy.serve.gradio.turbomind_coupled`: re-exports only."""

from ...infrastructure.webui import run_gradio as run_local  # noqa: F401
