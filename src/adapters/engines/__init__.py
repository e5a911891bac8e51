"""engines adapters."""
