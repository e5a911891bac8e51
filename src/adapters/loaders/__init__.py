"""loaders adapters."""
