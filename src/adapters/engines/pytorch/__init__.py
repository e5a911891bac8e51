"""engines pytorch adapters."""
