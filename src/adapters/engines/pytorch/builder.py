"""Build a ready ModelRunner: read the checkpoint, look its architecture's model class up, pick
device and dtype, load weights, size and allocate the cache."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from ....application.configs import PytorchEngineConfig
from ....domain.errors import InvalidArgument
from ...loaders import dummy
from ...loaders.checkpoint import Weights, open_checkpoint
from ...loaders.model_source import ModelSource
from .layers.linear import prepare_linears
from .models.base import CausalLM
from .models.config import ModelConfig
from .models.custom_map import load_custom_module_map
from .models.registry import model_class
from .models.weights import expected_weights, load_weights
from .runner.runner import PytorchModelRunner

logger = logging.getLogger(__name__)

_CPU_CACHE_CAP = 4 << 30  # bytes: a sane ceiling for the KV cache in host memory


@dataclass(frozen=True)
class BuiltModel:
    runner: PytorchModelRunner
    config: ModelConfig


def pick_device(config: PytorchEngineConfig) -> torch.device:
    if config.device_type == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(
    config: PytorchEngineConfig, model_cfg: ModelConfig, device: torch.device
) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if "bfloat16" in model_cfg.torch_dtype else torch.float16


def read_model_config(
    source: ModelSource, model_format: str | None = None
) -> tuple[ModelConfig, Weights | None]:
    """The model's shape, and a function yielding its HF-named weights (None: random weights)."""
    hf_config, weights = open_checkpoint(source)
    return ModelConfig.from_hf(hf_config, model_format), weights


def _load(model: CausalLM, source: ModelSource, weights: Weights | None) -> None:
    if weights is None:
        dummy.randomize(model)
        return
    loaded = load_weights(model, weights())
    missing = expected_weights(model) - loaded
    if missing:
        raise ValueError(
            f"{source.name}: weights missing from the checkpoint: {sorted(missing)[:5]}"
        )


def _num_blocks(
    config: PytorchEngineConfig, model_cfg: ModelConfig, device: torch.device, dtype: torch.dtype
) -> int:
    if config.num_gpu_blocks > 0:
        return config.num_gpu_blocks
    block_bytes = model_cfg.kv_bytes_per_token(torch.finfo(dtype).bits // 8) * config.block_size
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = _CPU_CACHE_CAP
    return max(1, int(free * config.cache_max_entry_count) // block_bytes)


def build(source: ModelSource, config: PytorchEngineConfig) -> BuiltModel:
    """Load on a short-lived thread. libgomp keeps an OpenMP pool per thread that ran a parallel
    region; while the caller's pool lives, the engine thread's pool counts as oversubscribing
    the cores and its workers sleep between regions, which made CPU decode steps 20-30% slower
    (benchmark/NOTES.md). The loader's pool dies with its thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdeploy-build") as pool:
        return pool.submit(_build, source, config).result()


def _refuse_partial_rotary(name: str, model_cfg: ModelConfig) -> None:
    """Rotary here turns every dim of a head; a model that turns only some would run wrong."""
    if model_cfg.partial_rotary_factor != 1.0:
        raise InvalidArgument(
            "model_path",
            f"{name} applies rotary embedding to {model_cfg.partial_rotary_factor:.0%} of each "
            f"head (partial_rotary_factor), which this build does not implement yet; use a "
            f"checkpoint whose rotary turns whole heads (e.g. Phi-3 rather than Phi-4-mini)",
        )


def _refuse_quantized_experts(name: str, model_cfg: ModelConfig) -> None:
    """The experts are one fused weight per layer (`layers/moe.py`), not quantized linears."""
    if model_cfg.quant_config is not None and model_cfg.num_experts:
        raise InvalidArgument(
            "model_path",
            f"{name} is a mixture-of-experts model quantized with "
            f"{model_cfg.quant_config.method}; this build runs quantized dense models only, "
            f"so use the model's unquantized checkpoint",
        )


def _build(source: ModelSource, config: PytorchEngineConfig) -> BuiltModel:
    custom_models = load_custom_module_map(config.custom_module_map)  # a bad map fails first
    model_cfg, weights = read_model_config(source, config.model_format)
    if config.rope_scaling is not None:  # TurboMind's rope_scaling_factor
        model_cfg = replace(model_cfg, rope_scaling=config.rope_scaling)
    max_model_len = config.session_len or model_cfg.max_position_embeddings
    _refuse_partial_rotary(source.name, model_cfg)
    _refuse_quantized_experts(source.name, model_cfg)
    cls = model_class(model_cfg.architectures, custom_models)
    device = pick_device(config)
    dtype = pick_dtype(config, model_cfg, device)
    with torch.device("meta"):
        model = cls(model_cfg)
    model = model.to(dtype).to_empty(device=device)
    _load(model, source, weights)
    model.eval()
    prepare_linears(model, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    num_blocks = _num_blocks(config, model_cfg, device, dtype)
    logger.info(
        "kv cache: %d blocks of %d tokens (%d tokens at most in flight) on %s (%s)",
        num_blocks,
        config.block_size,
        num_blocks * config.block_size,
        device,
        dtype,
    )
    runner = PytorchModelRunner(
        model,
        num_blocks,
        config.block_size,
        device,
        dtype,
        max_batch_size=config.max_batch_size or default_max_batch_size(device),
        max_model_len=max_model_len,
        use_cuda_graphs=not config.eager_mode,
        num_cpu_blocks=config.num_cpu_blocks,
    )
    return BuiltModel(runner, model_cfg)


def default_max_batch_size(device: torch.device) -> int:
    """As documented, 'set according to the device' when not given."""
    return 256 if device.type == "cuda" else 32
