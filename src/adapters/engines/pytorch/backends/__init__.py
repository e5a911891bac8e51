"""The implementations the layers dispatch to: cuda (Triton), cpu (C kernels), torch_native."""
