"""CUDA: wrappers of the Triton kernels in `lmdeploy.kernels`, imported only where CUDA runs."""
