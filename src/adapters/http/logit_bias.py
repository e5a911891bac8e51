"""OpenAI's `logit_bias` as a built-in logits processor: add each token's bias to its logit."""

from __future__ import annotations

import torch

from ...domain.errors import InvalidArgument


class LogitBias:
    def __init__(self, bias: dict[int, float], vocab_size: int) -> None:
        outside = [t for t in bias if not 0 <= t < vocab_size]
        if outside:
            raise InvalidArgument(
                "logit_bias",
                f"token ids {outside[:5]} are outside the vocabulary [0, {vocab_size})",
            )
        self._ids = list(bias)
        self._values = list(bias.values())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(self._ids, device=scores.device)
        return scores.index_add_(0, ids, torch.tensor(self._values, device=scores.device))
