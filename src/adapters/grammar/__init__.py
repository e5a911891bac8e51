"""Grammar backends: constrained decoding (response_format, enforced tool calls)."""
