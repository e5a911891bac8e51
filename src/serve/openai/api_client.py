"""Documented import path `lmdeploy.serve.openai.api_client`: re-exports only."""

from ...adapters.http.api_client import APIClient, get_model_list  # noqa: F401
