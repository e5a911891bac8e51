"""Documented import path lmdeploy.serve.gradio."""
