"""The generic loader: checkpoint-named tensors into a model's parameters, through each owning
layer's `weight_loader` and the model's `packed_modules_mapping`."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .base import CausalLM


def _default_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
    param.data.copy_(loaded)


def _loader_of(model: nn.Module, param_name: str):
    owner = model.get_submodule(param_name.rpartition(".")[0])
    return getattr(owner, "weight_loader", _default_loader)


def _skipped(model: CausalLM, name: str) -> bool:
    """Tensors a checkpoint may carry that no parameter takes: rotary tables that older
    transformers saved, and an LM head tied to the embedding."""
    return "rotary_emb" in name or (name == "lm_head.weight" and model.config.tie_word_embeddings)


def _slots(model: nn.Module, name: str) -> set[str]:
    """What a checkpoint must fill of parameter `name`: each of its shards, or it whole."""
    shards = getattr(model.get_submodule(name.rpartition(".")[0]), "shards", None)
    return {f"{name}#{s}" for s in shards} if shards else {name}


def load_weights(model: CausalLM, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """Copy checkpoint-named tensors in; returns what was filled (a packed parameter's shards
    as 'name#shard_id'), to compare with `expected_weights`. A mapped tensor of shard None
    fills its parameter whole (e.g. experts saved stacked)."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for checkpoint_name, tensor in weights:
        name = model.checkpoint_name(checkpoint_name)
        if name is None or _skipped(model, name):
            continue
        for fragment, (packed, shard_id) in model.packed_modules_mapping.items():
            if fragment in name:
                target = name.replace(fragment, packed)
                _loader_of(model, target)(params[target], tensor, shard_id)
                filled = _slots(model, target) if shard_id is None else {f"{target}#{shard_id}"}
                loaded.update(filled)
                break
        else:
            if name not in params:
                raise KeyError(f"unexpected weight {name!r} for {type(model).__name__}")
            _loader_of(model, name)(params[name], tensor)
            loaded.update(_slots(model, name))
    return loaded


def expected_weights(model: nn.Module) -> set[str]:
    """Every parameter, and every shard of a packed one, that a checkpoint must fill."""
    return set().union(*(_slots(model, name) for name, _ in model.named_parameters()))
