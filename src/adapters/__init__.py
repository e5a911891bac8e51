"""Adapters: one sub-package per outside thing (engines, loaders, tokenizers, HTTP, CLI)."""
