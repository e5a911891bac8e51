"""The mixture-of-experts MLP on CUDA: the grouped-GEMM Triton kernel. Imported only where CUDA
runs."""

from ......kernels.fused_moe import fused_moe_routed

__all__ = ["fused_moe_routed"]
