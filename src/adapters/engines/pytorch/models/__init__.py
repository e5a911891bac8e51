"""One file per model family (the math only), the registry by HF architecture, the shared
config, and the generic weight loader."""
