"""Phi-3 (`Phi3ForCausalLM`): Llama's math, with Q/K/V (`qkv_proj`) and gate/up
(`gate_up_proj`) stored fused in the checkpoint under the names of our packed parameters, so
nothing is renamed: each whole tensor is cut into its shards by the layer's `weight_loader`.

Partial rotary (Phi-4-mini's `partial_rotary_factor`) and the 128k variants' `longrope`
scaling are refused at build (`builder.py`, `layers/rotary.py`).
"""

from __future__ import annotations

from .llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping = {}
