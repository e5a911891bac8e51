"""CLI flags derived from the config dataclasses, so each option is written once."""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any

from ...application.configs import (
    ChatTemplateConfig,
    GenerationConfig,
    PytorchEngineConfig,
    TurbomindEngineConfig,
)

ENGINE_FIELDS = (
    "dtype",
    "tp",
    "session_len",
    "max_batch_size",
    "cache_max_entry_count",
    "cache_block_seq_len",
    "enable_prefix_caching",
    "quant_policy",
    "max_prefill_token_num",
    "model_format",
    "download_dir",
    "revision",
    "device_type",
    "eager_mode",
    "load_format",
    "num_gpu_blocks",
    "rope_scaling_factor",
    "num_cpu_blocks",
    "max_loras",
    "gguf_int_kernels",
    "nnodes",
    "node_rank",
    "distributed_executor_backend",
)
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens", "min_p")


# LMDeploy 0.6.5's own flag where it differs from the field's name (`--device ascend`).
_FLAG_ALIASES = {"device_type": ("--device",)}


def _flags(name: str) -> tuple[str, ...]:
    return ("--" + name.replace("_", "-"), *_FLAG_ALIASES.get(name, ()))


def _base_type(annotation: Any) -> type:
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and args:
        hint = args[0]
    if typing.get_origin(hint) is typing.Literal:
        return type(typing.get_args(hint)[0])
    return hint if isinstance(hint, type) else str


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...], seen: set[str]
) -> None:
    for field in dataclasses.fields(cls):
        if field.name not in names or field.name in seen:
            continue
        seen.add(field.name)
        kind = _base_type(field.type)
        if kind is bool:
            parser.add_argument(
                *_flags(field.name),
                action="store_true",
                default=None,
                help=f"{cls.__name__}.{field.name}",
            )
        else:
            parser.add_argument(
                *_flags(field.name),
                type=kind,
                default=None,
                help=f"{cls.__name__}.{field.name} (default {field.default})",
            )


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    seen: set[str] = set()
    _add_fields(parser, PytorchEngineConfig, ENGINE_FIELDS, seen)
    _add_fields(parser, TurbomindEngineConfig, ENGINE_FIELDS, seen)
    parser.add_argument("--backend", choices=["pytorch", "turbomind"], default=None)
    parser.add_argument(
        "--adapters",
        nargs="*",
        default=None,
        help="LoRA adapters (PEFT directories) as name=path pairs; one bare path is named "
        "'default'. Each is served as a model of its own (pytorch backend)",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        help="a built-in chat template's name (`lmdeploy list`) or a JSON file of "
        "ChatTemplateConfig fields",
    )
    parser.add_argument(
        "--log-level", default="WARNING", choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    _add_fields(parser, GenerationConfig, SAMPLING_FIELDS, set())


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    aliases = {"cache_block_seq_len": "block_size"} if cls is PytorchEngineConfig else {}
    out = {}
    for key, value in vars(args).items():
        if value is None:
            continue
        target = aliases.get(key, key)
        if target in names and (key in ENGINE_FIELDS or key in SAMPLING_FIELDS):
            out[target] = value
    return out


def engine_config_from(args: argparse.Namespace) -> PytorchEngineConfig | TurbomindEngineConfig:
    adapters = _adapters(getattr(args, "adapters", None))
    if args.backend == "turbomind":
        if adapters:
            raise SystemExit("--adapters: LoRA adapters are served by the pytorch backend only")
        return TurbomindEngineConfig(**_given(args, TurbomindEngineConfig))
    return PytorchEngineConfig(**_given(args, PytorchEngineConfig), adapters=adapters)


def _adapters(values: list[str] | None) -> dict[str, str] | None:
    """`--adapters a=path1 b=path2`, or as 0.6.5 one bare path (the adapter 'default')."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return {"default": values[0]}
    pairs = [value.partition("=") for value in values]
    bad = [
        value for value, (_, sep, path) in zip(values, pairs, strict=True) if not sep or not path
    ]
    if bad:
        raise SystemExit(f"--adapters: expected name=path pairs, got {bad}")
    return {name: path for name, _, path in pairs}


def gen_config_from(args: argparse.Namespace, **overrides: Any) -> GenerationConfig:
    values = _given(args, GenerationConfig)
    sampling = any(k in values for k in ("temperature", "top_p", "top_k", "min_p"))
    return GenerationConfig(do_sample=sampling, **{**values, **overrides})


def chat_template_from(args: argparse.Namespace) -> ChatTemplateConfig | None:
    """`--chat-template`: a JSON file (ending in .json, or any existing file) or a name."""
    value = args.chat_template
    if not value:
        return None
    if value.endswith(".json") or os.path.isfile(value):
        return ChatTemplateConfig.from_json(value)
    return ChatTemplateConfig(model_name=value)
