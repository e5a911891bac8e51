"""Triton kernels, one concern a file, each with its PyTorch reference."""
