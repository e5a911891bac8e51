"""Build a ready ModelRunner: read the checkpoint, look its architecture's model class up, pick
device and dtype, load weights, size and allocate the cache."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from ....application.configs import PytorchEngineConfig
from ....domain.errors import InvalidArgument, InvalidConfig
from ...loaders import dummy
from ...loaders.checkpoint import Weights, open_checkpoint
from ...loaders.model_source import ModelSource
from ...loaders.peft_adapter import read_peft_adapter
from .backends.cpu import gguf_float, gguf_linear
from .distributed.parallel_state import local_kv_heads, tp_rank, tp_size
from .distributed.step_channel import ModelBroadcaster, StepChannel, serve
from .distributed.workers import (
    LocalWorkers,
    Rendezvous,
    WatchedWorkers,
    free_port,
    join_group,
    leave_group,
)
from .layers.attention import Attention
from .layers.linear import fuse_input_quant, prepare_linears
from .layers.norm import link_norms
from .models.base import CausalLM
from .models.config import ModelConfig
from .models.custom_map import load_custom_module_map
from .models.registry import model_class
from .models.weights import expected_weights, load_weights
from .platforms import Platform
from .runner.kv_cache import kv_bytes_per_token
from .runner.lora_pool import AdapterPool
from .runner.runner import PytorchModelRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltModel:
    runner: PytorchModelRunner
    config: ModelConfig


def pick_dtype(
    config: PytorchEngineConfig, model_cfg: ModelConfig, platform: Platform
) -> torch.dtype:
    if config.dtype != "auto":
        return getattr(torch, config.dtype)
    return platform.default_dtype(model_cfg.torch_dtype)


def read_model_config(
    source: ModelSource, model_format: str | None = None
) -> tuple[ModelConfig, Weights | None]:
    """The model's shape, and a function yielding its HF-named weights (None: random weights)."""
    hf_config, weights = open_checkpoint(source)
    return ModelConfig.from_hf(hf_config, model_format), weights


def quantized_types(config: PytorchEngineConfig, device: torch.device) -> frozenset[str]:
    """The GGUF types to keep quantized: on a CPU with dtype 'auto', those the float-activation
    kernel reads (or, with `gguf_int_kernels`, the int8 kernels); otherwise none: dtype
    'float32' keeps the exact dequantized float path."""
    if device.type != "cpu" or config.dtype != "auto" or config.tp > 1:
        return frozenset()  # blocks are kept whole: a tensor-parallel rank takes its slice
    kernel = gguf_linear if config.gguf_int_kernels else gguf_float
    return frozenset(kernel.TYPE_IDS) if kernel.available() else frozenset()


def _load(
    model: CausalLM, source: ModelSource, weights: Weights | None, keep: frozenset[str]
) -> None:
    if weights is None:
        dummy.randomize(model)
        return
    try:
        loaded = load_weights(model, weights(keep_quantized=keep))
    except KeyError as exc:
        quant = model.config.quant_config
        if quant is None:
            raise
        # Dense tensors where quantized ones belong: model_format named a format the
        # checkpoint is not in.
        raise InvalidArgument(
            "model_format",
            f"{source.name} does not hold {quant.method} weights ({exc.args[0]}); leave "
            f"model_format unset for a dense checkpoint",
        ) from None
    missing = expected_weights(model) - loaded
    if missing:
        raise ValueError(
            f"{source.name}: weights missing from the checkpoint: {sorted(missing)[:5]}"
        )


def _num_blocks(
    config: PytorchEngineConfig, model_cfg: ModelConfig, platform: Platform, dtype: torch.dtype
) -> int:
    if config.num_gpu_blocks > 0:
        return config.num_gpu_blocks
    # A tensor-parallel rank caches only its KV heads.
    kv_heads = local_kv_heads(model_cfg.num_attention_heads, model_cfg.num_key_value_heads)
    token_bytes = kv_bytes_per_token(
        model_cfg.num_hidden_layers,
        kv_heads,
        model_cfg.head_dim,
        torch.finfo(dtype).bits // 8,
        config.quant_policy,
    )
    block_bytes = token_bytes * config.block_size
    platform.synchronize()  # the loader's copies done: what is free now stays free
    free = platform.free_memory()
    return max(1, int(free * config.cache_max_entry_count) // block_bytes)


def build(source: ModelSource, config: PytorchEngineConfig, platform: Platform) -> BuiltModel:
    """Load on a short-lived thread. libgomp keeps an OpenMP pool per thread that ran a parallel
    region; while the caller's pool lives, the engine thread's pool counts as oversubscribing
    the cores and its workers sleep between regions, which made CPU decode steps 20-30% slower
    (benchmark/NOTES.md). The loader's pool dies with its thread."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdeploy-build") as pool:
        return pool.submit(_build, source, config, platform).result()


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


def _build(source: ModelSource, config: PytorchEngineConfig, platform: Platform) -> BuiltModel:
    if config.node_rank != 0:
        raise InvalidConfig(
            "node_rank",
            f"the engine runs on node 0 and reaches the other nodes through Ray; on node "
            f"{config.node_rank} run `ray start --address=<node 0's ip>:6379` instead, then "
            f"start lmdeploy on node 0 with --nnodes {config.nnodes} --node-rank 0",
        )
    if config.tp == 1:
        return _build_rank(source, config, platform)
    if platform.dist_backend is None:
        raise InvalidConfig(
            "tp",
            f"tp={config.tp} on {platform.name}: tensor parallelism runs on CUDA (and the CPU) "
            f"in this build; use tp=1",
        )
    model_cfg, _ = read_model_config(source, config.model_format)
    # Refused here, before any process starts, naming tp and the head counts.
    local_kv_heads(model_cfg.num_attention_heads, model_cfg.num_key_value_heads, config.tp)
    if config.adapters:  # the adapters' hooks run on rank 0's linears only
        raise InvalidConfig(
            "tp", f"tp={config.tp} with LoRA adapters: adapters run at tp=1 in this build"
        )
    if model_cfg.quant_config is not None:  # `rank_slice` cuts dense layouts only
        raise InvalidConfig(
            "tp",
            f"tp={config.tp} with a {model_cfg.quant_config.method} checkpoint: quantized "
            f"weights run at tp=1 in this build; use tp=1 or the unquantized checkpoint",
        )
    workers, rdv, cuda_index = _start_workers(source, config, platform)
    try:
        join_group(rdv, 0, cuda_index)
        return _build_rank(source, config, platform, workers)
    except BaseException:
        workers.close()
        leave_group(orderly=False)
        raise


def _start_workers(
    source: ModelSource, config: PytorchEngineConfig, platform: Platform
) -> tuple[WatchedWorkers, Rendezvous, int | None]:
    """Ranks 1..tp-1 started, where they meet rank 0, and the GPU rank 0 drives (None: the
    default)."""
    backend = platform.dist_backend
    assert backend is not None, "refused by _build"
    executor = config.distributed_executor_backend or ("ray" if config.nnodes > 1 else "mp")
    if executor == "mp":
        rdv = Rendezvous("127.0.0.1", free_port(), config.tp, backend)
        return LocalWorkers(serve_rank, (source, config, platform), rdv), rdv, None
    from .distributed.ray_workers import RayWorkers  # ray is an optional dependency

    workers = RayWorkers(serve_rank, (source, config, platform), config.tp, backend, config.nnodes)
    return workers, workers.rdv, workers.cuda_index


def serve_rank(
    rank: int,
    rdv: Rendezvous,
    source: ModelSource,
    config: PytorchEngineConfig,
    platform: Platform,
) -> None:
    """A spawned worker process: rank `rank`'s shard of the model, serving rank 0's calls."""
    join_group(rdv, rank)
    orderly = False
    try:
        built = _build_rank(source, config, platform)
        runner = built.runner
        with torch.inference_mode():
            serve(
                runner.model,
                runner.kv_caches,
                StepChannel(runner.device),
                (runner.dtype, runner.rope.cos.dtype),
                config.block_size,
                runner.capture_graphs,
                runner.swapper.apply if runner.swapper is not None else None,
            )
        orderly = True  # rank 0 said STOP and leaves the group now too
    finally:
        leave_group(orderly)


def _agree_on_blocks(num_blocks: int, device: torch.device) -> int:
    """Every rank's cache holds the same blocks: the fewest any rank has room for."""
    if tp_size() == 1:
        return num_blocks
    agreed = torch.tensor([num_blocks], dtype=torch.int64, device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return int(agreed.item())


def _build_rank(
    source: ModelSource,
    config: PytorchEngineConfig,
    platform: Platform,
    workers: WatchedWorkers | None = None,
) -> BuiltModel:
    """This process's rank of the model (the whole model at tp=1); `workers`: on rank 0 of a
    tensor-parallel group, the other ranks."""
    custom_models = load_custom_module_map(config.custom_module_map)  # a bad map fails first
    model_cfg, weights = read_model_config(source, config.model_format)
    if config.rope_scaling is not None:  # TurboMind's rope_scaling_factor
        model_cfg = replace(model_cfg, rope_scaling=config.rope_scaling)
    max_model_len = config.session_len or model_cfg.max_position_embeddings
    _refuse_partial_rotary(source.name, model_cfg)
    _refuse_quantized_experts(source.name, model_cfg)
    cls = model_class(model_cfg.architectures, custom_models)
    device = platform.device
    dtype = pick_dtype(config, model_cfg, platform)
    with torch.device("meta"):
        model = cls(model_cfg)
    model = model.to(dtype).to_empty(device=device)
    _load(model, source, weights, quantized_types(config, device))
    model.eval()
    use_graphs = platform.supports_graphs and not config.eager_mode
    prepare_linears(
        model,
        device,
        dtype,
        pack=platform.packs_linears,
        gguf_int8=config.gguf_int_kernels,
        # One-row kernels timed against cuBLAS as the decode graphs replay them (eager steps
        # pay Triton's launch on the CPU); LMDEPLOY_DENSE_GEMV=0 keeps cuBLAS (A/B runs).
        decode_gemv=use_graphs and os.environ.get("LMDEPLOY_DENSE_GEMV", "1") != "0",
    )
    max_batch_size = config.max_batch_size or platform.default_max_batch_size()
    lora = _adapter_pool(model, config, device, dtype, max_batch_size if use_graphs else 0)
    # After the adapters: a linear that LoRA hooks keeps its float input.
    fuse_input_quant(model, getattr(model, "quantized_input_producers", {}))
    if device.type == "cuda":  # after the adapters and the 8-bit inputs: neither is linked
        link_norms(model)
    num_blocks = _agree_on_blocks(_num_blocks(config, model_cfg, platform, dtype), device)
    logger.info(
        "kv cache: %d blocks of %d tokens (%d tokens at most in flight) on %s (%s, %s)",
        num_blocks,
        config.block_size,
        num_blocks * config.block_size,
        device,
        dtype,
        f"int{config.quant_policy}" if config.quant_policy else "unquantized",
    )
    runner = PytorchModelRunner(
        model,
        num_blocks,
        config.block_size,
        device,
        dtype,
        max_batch_size=max_batch_size,
        max_model_len=max_model_len,
        # Decodes take no prefill budget: a step carries up to one token a running sequence more.
        max_step_tokens=config.max_prefill_token_num + max_batch_size,
        # Ranks other than 0 capture when rank 0 announces it (step_channel's CAPTURE), so
        # the collectives of every rank's warm-up and capture pair up in one order.
        use_cuda_graphs=use_graphs and tp_rank() == 0,
        num_cpu_blocks=config.num_cpu_blocks,
        peers=ModelBroadcaster(model, StepChannel(device)) if workers is not None else None,
        workers=workers,
        quant_policy=config.quant_policy,
        lora=lora,
        cpu_fused_decode=_cpu_fused_decode(config, device, dtype, lora),
        # A/B runs: LMDEPLOY_CPU_REPACK=0 keeps the step on the GGUF blocks.
        cpu_repack=os.environ.get("LMDEPLOY_CPU_REPACK", "1") != "0",
    )
    if device.type == "cuda":  # every attention shape now, not in a serving step (~1 s each)
        from .backends.cuda.attention import (  # Triton: where it runs
            compile_decode_kernels,
            compile_prefill_kernels,
        )

        try:
            kinds = [(m.heads, m.options) for m in model.modules() if isinstance(m, Attention)]
            compile_prefill_kernels(kinds, runner.kv_caches, config.block_size, dtype)
            compile_decode_kernels(kinds, runner.kv_caches, config.block_size, dtype, max_model_len)
        except Exception:  # a start-up saving only: a real step shows any kernel fault
            logger.warning("compiling the attention kernels at start failed", exc_info=True)
    return BuiltModel(runner, model_cfg)


def _cpu_fused_decode(
    config: PytorchEngineConfig, device: torch.device, dtype: torch.dtype, lora: AdapterPool | None
) -> bool:
    """Whether one sequence's decode steps may run their layers in one C call (the runner
    still checks the model's layout): a CPU in float32 at tp=1, without LoRA or a quantized KV
    cache; `LMDEPLOY_CPU_FUSED_DECODE=0` keeps the layer-by-layer path (A/B runs)."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and config.tp == 1
        and lora is None
        and config.quant_policy == 0
        and os.environ.get("LMDEPLOY_CPU_FUSED_DECODE", "1") != "0"
    )


def _adapter_pool(
    model: CausalLM,
    config: PytorchEngineConfig,
    device: torch.device,
    dtype: torch.dtype,
    max_graph_rows: int,
) -> AdapterPool | None:
    """`max_graph_rows`: the largest decode batch a graph replays (0: no graphs)."""
    if not config.adapters:
        return None
    adapters = [read_peft_adapter(name, path) for name, path in config.adapters.items()]
    num_slots = min(config.max_loras or len(adapters), len(adapters))
    return AdapterPool(model, adapters, num_slots, device, dtype, max_graph_rows=max_graph_rows)
