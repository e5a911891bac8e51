"""Documented import path lmdeploy.serve.openai."""
