"""Documented import path `lmdeploy.serve.openai.api_client`: re-exports only."""

from ...adapters.http.api_client import APIClient  # noqa: F401
