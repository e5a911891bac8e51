"""Quantized linears: which method a checkpoint's linears use, and how each method holds,
loads and applies its weights (vLLM's `QuantizationConfig` / `LinearMethodBase` pattern).

The contract, for a new method (one file a method, registered in `config.py`'s `METHODS`):

- A frozen dataclass subclassing `QuantConfig`, with `method` (the checkpoint's
  `quantization_config.quant_method`, or the `model_format` that selects it), a classmethod
  `from_hf(cfg)` that reads `config.json`'s `quantization_config` dict and raises
  `InvalidArgument` naming the field it cannot run, a classmethod `default()` for a
  checkpoint that declares the method only through `model_format`, and
  `linear_method() -> LinearMethod`.
- A `LinearMethod` whose
  - `create_weights(layer, bias)` registers the layer's parameters (on the meta device, in the
    build's dtype; integer tensors keep their dtype through `model.to(dtype)`) and declares, in
    `layer.output_dims[name] = (dim, pack)`, the dimension of each parameter that runs over
    the output features and how many features one element packs (8 nibbles of an int32: 8).
    A parameter absent from `output_dims` is loaded whole, once per shard (GPTQ's g_idx).
    `LinearBase.weight_loader` then places every shard of a packed q/k/v or gate/up
    parameter (`layer.shards`: shard id -> (first output feature, number of features)), and
    cuts a checkpoint tensor that arrives packed whole; the method needs no loader of its own.
  - `process_weights_after_loading(layer, device)` turns the loaded tensors into the layout
    `apply` wants on `device`. It may replace the layer's parameters and its `method`; on a
    CPU the 4-bit methods dequantise to a dense `weight` and become `UnquantizedLinearMethod`,
    so the CPU's packed GEMMs (`prepare_linears`) take them as they take any dense linear.
  - `apply(layer, x)` computes x W^T + b in x's dtype, through `lmdeploy_kernels/` on CUDA.
  - optionally `prequantized_input()`: the 8-bit dtype in which `apply` also takes its input
    already quantised per token (`QuantizedActivation`); `fuse_input_quant` then lets the norm
    or activation before the linear quantise as it writes (W8A8 on its 8-bit kernels).
- `ModelConfig.quant_config` carries the checkpoint's config to the layers: model files pass it
  to every linear they build (`quant_config=cfg.quant_config`) and never branch on it. The LM
  head and the embeddings stay dense, as AWQ and GPTQ checkpoints store them.
"""

from . import awq, gptq, w8a8  # noqa: F401  (each registers itself in METHODS)
from .base import LinearMethod, QuantConfig, UnquantizedLinearMethod
from .config import METHODS, resolve_quant_config

__all__ = [
    "METHODS",
    "LinearMethod",
    "QuantConfig",
    "UnquantizedLinearMethod",
    "resolve_quant_config",
]
