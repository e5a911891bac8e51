"""The `SmoothQuantModel` port over a transformers decoder: calibrate, smooth, quantise, save
a checkpoint in LMDeploy's W8A8 layout (each linear of the decoder layers: `weight` int8 or
float8_e4m3fn [out, in] and `scale` fp32 [out, 1]; norms, embeddings and the head in float)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ...kernels.per_token_quant import per_token_quant_ref
from .hf_float_model import HFFloatModel, open_hf_float_model
from .smoothing import smooth_linear_into, smooth_norm_into

# Within a decoder layer: the norm -> the linears reading its output, and the linear whose
# output rows feed another linear directly (LMDeploy 0.6.5's maps for these families).
NORM_TO_LINEARS = {
    "input_layernorm": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "post_attention_layernorm": ["mlp.gate_proj", "mlp.up_proj"],
}
LINEAR_TO_LINEARS = {"self_attn.v_proj": ["self_attn.o_proj"], "mlp.up_proj": ["mlp.down_proj"]}
# Files of the source directory that describe the model beside its weights and tokenizer.
_EXTRA_FILES = ("generation_config.json",)


class TorchSmoothQuantModel:
    def __init__(self, opened: HFFloatModel) -> None:
        self.opened = opened
        self.model = opened.model
        self.layers = self.model.model.layers
        # Per linear of the decoder layers (by full name): the max |input| per channel so far.
        self.act_amax: dict[str, torch.Tensor] = {}
        self.quantized: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.quant_dtype = "int8"

    @classmethod
    def open(
        cls, model_path: str, dtype: str = "auto", device: str = "auto"
    ) -> TorchSmoothQuantModel:
        return cls(open_hf_float_model(model_path, dtype, device))

    def linears(self) -> dict[str, nn.Linear]:
        return {
            f"model.layers.{i}.{name}": module
            for i, layer in enumerate(self.layers)
            for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)
        }

    def encode(self, text: str) -> list[int]:
        return self.opened.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def observe(self, batch: list[list[int]]) -> None:
        hooks = [
            fc.register_forward_pre_hook(self._recorder(name))
            for name, fc in self.linears().items()
        ]
        try:
            length = min(len(ids) for ids in batch)  # equal windows but for a short text
            device = next(self.model.parameters()).device
            ids = torch.tensor([s[:length] for s in batch], device=device)
            self.model.model(input_ids=ids, use_cache=False)
        finally:
            for hook in hooks:
                hook.remove()

    def _recorder(self, name: str):
        def record(module: nn.Module, args: tuple) -> None:
            amax = args[0].detach().abs().flatten(0, -2).amax(dim=0).float()
            seen = self.act_amax.get(name)
            self.act_amax[name] = amax if seen is None else torch.maximum(seen, amax)

        return record

    @torch.no_grad()
    def smooth(self, alpha: float) -> None:
        for i, layer in enumerate(self.layers):
            for norm_name, fc_names in NORM_TO_LINEARS.items():
                fcs = [layer.get_submodule(n) for n in fc_names]
                amax = self.act_amax[f"model.layers.{i}.{fc_names[0]}"]
                smooth_norm_into(layer.get_submodule(norm_name), fcs, amax, alpha)
            for producer, fc_names in LINEAR_TO_LINEARS.items():
                fcs = [layer.get_submodule(n) for n in fc_names]
                amax = self.act_amax[f"model.layers.{i}.{fc_names[0]}"]
                smooth_linear_into(layer.get_submodule(producer), fcs, amax, alpha)

    @torch.no_grad()
    def quantize(self, quant_dtype: str) -> None:
        dtype = getattr(torch, quant_dtype)
        self.quant_dtype = quant_dtype
        for name, fc in self.linears().items():
            q, scale = per_token_quant_ref(fc.weight.float(), dtype)  # per output channel
            self.quantized[name] = (q.cpu(), scale.cpu())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors: the quantised linears' weight and scale, the rest as is."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        if self.model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        for name, (q, scale) in self.quantized.items():
            state[f"{name}.weight"], state[f"{name}.scale"] = q, scale
        return state

    def save(self, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(work_dir / "model.safetensors"), {"format": "pt"})
        config = self.model.config.to_dict()
        # transformers 4 (LMDeploy 0.6.5's) reads these names; 5 writes `dtype`/`rope_parameters`.
        config.setdefault("torch_dtype", config.get("dtype"))
        config.setdefault("rope_theta", (config.get("rope_parameters") or {}).get("rope_theta"))
        config["quantization_config"] = {
            "quant_method": "smooth_quant",
            "quant_dtype": self.quant_dtype,
        }
        (work_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.opened.tokenizer.save_pretrained(str(work_dir))
        source = self.opened.source_dir
        for name in _EXTRA_FILES if source is not None else ():
            if (source / name).is_file():
                shutil.copy(source / name, work_dir / name)
