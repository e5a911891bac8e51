"""Documented import path `lmdeploy.serve.gradio.app`: re-exports only."""

from ...infrastructure.webui import run_gradio as run  # noqa: F401
