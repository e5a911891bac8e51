"""The ModelRunner port: step inputs, decode steps started ahead, CUDA graphs, KV swap."""
