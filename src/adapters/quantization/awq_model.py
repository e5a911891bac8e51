"""The `AwqModel` port over a transformers Llama-style decoder: run the calibration samples
layer by layer, search and fold AWQ scales, clip and quantise each linear, and save an
AutoAWQ "gemm" checkpoint (non-linear weights in the model's float type)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ...application.quantization.auto_awq import AwqPlan
from ...domain.errors import InvalidArgument
from .awq_layout import dequantize_groups, quantize_groups, to_awq_tensors
from .awq_search import ScaleGroup, fold_scales, search_clip, search_scales
from .hf_float_model import HFFloatModel, open_hf_float_model

# q and k feed a softmax, where AutoAWQ found clipping hurts; the other linears are clipped.
_NO_CLIP = ("q_proj", "k_proj")
_EXTRA_FILES = ("generation_config.json",)


class _Stop(Exception):
    """Raised by the hook that catches layer 0's inputs: the rest of the model need not run."""


class TorchAwqModel:
    def __init__(self, opened: HFFloatModel) -> None:
        self.opened = opened
        self.model = opened.model
        self.layers = self.model.model.layers
        self.num_layers = len(self.layers)
        self.hidden: list[torch.Tensor] = []  # the current layer's input, per batch
        self.kwargs: list[dict[str, Any]] = []  # its other arguments (mask, rotary), per batch
        self.quantized: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, model_path: str, dtype: str = "auto", device: str = "auto") -> TorchAwqModel:
        return cls(open_hf_float_model(model_path, dtype, device))

    def encode(self, text: str) -> list[int]:
        return self.opened.tokenizer.encode(text, add_special_tokens=False)

    def check_group_size(self, group_size: int) -> None:
        for i, layer in enumerate(self.layers):
            for name, fc in layer.named_modules():
                if isinstance(fc, nn.Linear) and fc.in_features % group_size:
                    raise InvalidArgument(
                        "w_group_size",
                        f"{group_size} does not divide model.layers.{i}.{name}'s "
                        f"{fc.in_features} input features (AWQ's groups cannot straddle "
                        "rows); pass a --w-group-size that divides it, such as 64 or 32",
                    )

    @torch.no_grad()
    def start(self, batches: list[list[list[int]]]) -> None:
        """Embed the calibration batches: layer 0's inputs."""
        device = next(self.model.parameters()).device

        def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
            self.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            raise _Stop

        hook = self.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            for batch in batches:
                length = min(len(ids) for ids in batch)
                ids = torch.tensor([s[:length] for s in batch], device=device)
                try:
                    self.model.model(input_ids=ids, use_cache=False)
                except _Stop:
                    pass
        finally:
            hook.remove()

    @torch.no_grad()
    def quantize_layer(self, index: int, plan: AwqPlan) -> None:
        layer = self.layers[index]
        groups, outputs = self._calibrate(layer)
        for group in groups:
            if group.scalable and plan.alphas != (0.0,):
                fold_scales(group, search_scales(group, list(plan.alphas), plan.group_size))
        for name, fc in layer.named_modules():
            if not isinstance(fc, nn.Linear):
                continue
            if plan.clip_grid and not name.endswith(_NO_CLIP):
                search_clip(
                    fc,
                    self._inputs_of(groups, fc),
                    plan.group_size,
                    plan.clip_grid,
                    plan.clip_tokens,
                )
            quant = quantize_groups(fc.weight.data, plan.group_size)
            self.quantized[f"model.layers.{index}.{name}"] = to_awq_tensors(quant)
            fc.weight.data = dequantize_groups(quant, plan.group_size).to(fc.weight.dtype)
        self.hidden = outputs

    def _calibrate(self, layer: nn.Module) -> tuple[list[ScaleGroup], list[torch.Tensor]]:
        """Run the float layer on every batch, keeping what each scale group reads; the
        layer's outputs are the next layer's inputs."""
        attn, mlp = layer.self_attn, layer.mlp
        seen: dict[str, list] = {"attn": [], "o": [], "mlp": [], "down": []}

        def keep(key: str):
            def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                seen[key].append((args, kwargs))

            return hook

        hooks = [
            attn.register_forward_pre_hook(keep("attn"), with_kwargs=True),
            attn.o_proj.register_forward_pre_hook(keep("o"), with_kwargs=True),
            mlp.register_forward_pre_hook(keep("mlp"), with_kwargs=True),
            mlp.down_proj.register_forward_pre_hook(keep("down"), with_kwargs=True),
        ]
        try:
            outputs = [
                _first(layer(h, **kw)) for h, kw in zip(self.hidden, self.kwargs, strict=True)
            ]
        finally:
            for hook in hooks:
                hook.remove()
        groups = [
            _group(
                layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], attn, seen["attn"]
            ),
            _group(attn.v_proj, [attn.o_proj], attn.o_proj, seen["o"]),
            _group(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], mlp, seen["mlp"]),
            _group(mlp.up_proj, [mlp.down_proj], mlp.down_proj, seen["down"]),
        ]
        # v's rows can take o's scales only when each o input is one v output (no
        # grouped-query repetition); otherwise o is quantised unscaled (AutoAWQ does so too).
        groups[1].scalable = attn.v_proj.out_features == attn.o_proj.in_features
        return groups, outputs

    def _inputs_of(self, groups: list[ScaleGroup], fc: nn.Linear) -> list[torch.Tensor]:
        for group in groups:
            if any(fc is linear for linear in group.linears):
                return group.inputs
        raise AssertionError("every linear of a decoder layer is in a scale group")

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if self.model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        for name, tensors in self.quantized.items():
            del state[f"{name}.weight"]
            state.update({f"{name}.{key}": t.cpu() for key, t in tensors.items()})
        return state

    def save(self, work_dir: Path, quantization_config: dict[str, Any]) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(work_dir / "model.safetensors"), {"format": "pt"})
        config = self.model.config.to_dict()
        config["quantization_config"] = quantization_config
        (work_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.opened.tokenizer.save_pretrained(str(work_dir))
        source = self.opened.source_dir
        for name in _EXTRA_FILES if source is not None else ():
            if (source / name).is_file():
                shutil.copy(source / name, work_dir / name)


def _group(
    producer: nn.Module, linears: list[nn.Linear], module: nn.Module, seen: list
) -> ScaleGroup:
    """A scale group over the calls `seen` recorded: its module re-run on each call's
    arguments, its linears' input the call's first argument (the hidden states)."""
    inputs = [args[0] if args else kwargs["hidden_states"] for args, kwargs in seen]

    def run(i: int) -> torch.Tensor:
        args, kwargs = seen[i]
        if args:
            return _first(module(inputs[i], *args[1:], **kwargs))
        return _first(module(**{**kwargs, "hidden_states": inputs[i]}))

    return ScaleGroup(producer, linears, module, inputs, run)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
