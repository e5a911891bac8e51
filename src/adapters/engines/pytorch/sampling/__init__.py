"""Sampling on the device: the batch columns, the sampler (and its fused CUDA kernel), user
logits processors, grammar masks."""
