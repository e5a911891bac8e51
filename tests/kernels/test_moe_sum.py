"""The MoE token sum (each token's k weighted expert rows added) against torch's reduction."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.moe_sum import moe_token_sum, moe_token_sum_ref

from ._util import DEVICE, TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("top_k", [1, 3, 8])  # 3: the slot block is padded to 4
@pytest.mark.parametrize("num_tokens, hidden", [(1, 72), (5, 1100)])  # column tails, 3 blocks
def test_equals_torch_sum(num_tokens, hidden, top_k, dtype):
    torch.manual_seed(top_k)
    down = torch.randn(num_tokens * top_k, hidden, device=DEVICE).to(dtype)
    got = moe_token_sum(down, top_k)
    assert got.shape == (num_tokens, hidden) and got.dtype == dtype
    torch.testing.assert_close(got, moe_token_sum_ref(down, top_k), **TOL[dtype])


def test_rows_of_other_tokens_are_not_summed():
    down = torch.zeros(6, 8, device=DEVICE)
    down[[0, 1]] = 1.0  # token 0's two slots
    down[[4, 5]] = 2.0  # token 2's
    assert moe_token_sum(down, 2).tolist() == [[2.0] * 8, [0.0] * 8, [4.0] * 8]


def test_rejects_rows_not_a_multiple_of_top_k():
    with pytest.raises(AssertionError, match="tokens \\* top_k"):
        moe_token_sum(torch.zeros(5, 8, device=DEVICE), 2)
