"""The PyTorch engine. `builder` reads a checkpoint and builds a runner; `models/` holds one
file per family (the math only) and the registry by HF architecture; `layers/` the ops, each
dispatching once to a backend; `backends/` the CUDA (Triton), CPU (C) and torch implementations;
`runner/` the step loop over the paged KV cache; `sampling/` the sampler and its logit rules."""
