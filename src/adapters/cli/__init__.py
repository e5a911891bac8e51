"""cli adapters."""
