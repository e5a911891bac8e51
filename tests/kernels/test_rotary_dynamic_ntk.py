"""Dynamic NTK rope: the engine's tables against transformers' own inverse frequencies, and the
rotary kernel on per-token tables of sequences of different lengths."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.layers.rotary import RotaryTables, dynamic_ntk_inv_freq
from lmdeploy.kernels.rotary import rotary, rotary_ref

from ._util import DEVICE, TOL

MAX_TRAINED, FACTOR, THETA = 64, 2.5, 10000.0


def _hf_inv_freq(head_dim: int, seq_len: int) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=head_dim * 4,
        num_attention_heads=4,
        max_position_embeddings=MAX_TRAINED,
        rope_scaling={"rope_type": "dynamic", "factor": FACTOR, "rope_theta": THETA},
    )
    inv_freq, _ = ROPE_INIT_FUNCTIONS["dynamic"](config, "cpu", seq_len=seq_len)
    return inv_freq.double()


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("seq_len", [1, 64, 65, 100, 4000])
def test_inv_freq_matches_transformers(head_dim, seq_len):
    ours = dynamic_ntk_inv_freq(head_dim, THETA, FACTOR, MAX_TRAINED, torch.tensor([seq_len]))
    # transformers computes in float32: agreement to float32 rounding.
    torch.testing.assert_close(ours[0], _hf_inv_freq(head_dim, seq_len), rtol=2e-6, atol=0)


def _tables(head_dim: int, rows: int = 300) -> RotaryTables:
    scaling = {"rope_type": "dynamic", "factor": FACTOR}
    return RotaryTables(head_dim, rows, THETA, scaling, MAX_TRAINED, DEVICE)


def test_decode_table_row_uses_its_own_length():
    """Row p is what transformers uses for the token at p of a p + 1 token sequence."""
    head_dim = 64
    tables = _tables(head_dim)
    for p in (0, 63, 64, 65, 200, 299):
        angles = p * _hf_inv_freq(head_dim, p + 1)
        want = torch.cat([angles, angles]).cos().float()
        torch.testing.assert_close(tables.cos[p].cpu(), want, rtol=1e-5, atol=1e-5)


def test_needs_lengths_only_for_a_prefill_past_the_trained_length():
    tables = _tables(64)
    assert not tables.needs_lengths([30, 64], is_decode=False)
    assert tables.needs_lengths([30, 65], is_decode=False)
    assert not tables.needs_lengths([300], is_decode=True)  # the table is exact for decode
    plain = RotaryTables(64, 300, THETA, None, MAX_TRAINED, DEVICE)
    assert not plain.needs_lengths([300], is_decode=False)


def test_kernel_on_per_token_tables_of_two_sequences():
    """A prefill step of a 40-token prompt (base unchanged) and a 90-token one (base grown):
    each token rotated with its own sequence's base, against transformers' frequencies."""
    torch.manual_seed(0)
    heads, kv_heads, head_dim = 6, 2, 64
    lens = [40, 90]
    positions = torch.cat([torch.arange(n) for n in lens]).to(DEVICE)
    seq_lens = torch.cat([torch.full((n,), n) for n in lens]).to(DEVICE)
    cos, sin = _tables(head_dim).at(positions, seq_lens)
    want_cos, want_sin = [], []
    for n in lens:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * _hf_inv_freq(head_dim, n)
        emb = torch.cat([angles, angles], dim=-1)
        want_cos.append(emb.cos().float())
        want_sin.append(emb.sin().float())
    torch.testing.assert_close(cos.cpu(), torch.cat(want_cos), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(sin.cpu(), torch.cat(want_sin), rtol=1e-5, atol=2e-5)
    q = torch.randn(len(positions), heads, head_dim, device=DEVICE)
    k = torch.randn(len(positions), kv_heads, head_dim, device=DEVICE)
    ref_q, ref_k = rotary_ref(q, k, torch.cat(want_cos).to(DEVICE), torch.cat(want_sin).to(DEVICE))
    out_q, out_k = rotary(q, k, cos, sin)
    torch.testing.assert_close(out_q, ref_q, **TOL[torch.float32])
    torch.testing.assert_close(out_k, ref_k, **TOL[torch.float32])
