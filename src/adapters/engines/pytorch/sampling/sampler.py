"""Batched sampling on the device: penalties, temperature, top-k, top-p, min-p, seeded noise.

Greedy rows take the argmax; the others sample with the exponential-race trick
(argmax of p / Exp(1)), which needs no host sync and lets a seeded row draw its own noise.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from .batch import SamplingBatch


@functools.lru_cache(maxsize=64)
def _ids_on(device: torch.device, ids: tuple[int, ...]) -> torch.Tensor:
    """A banned-id set on the device, copied once: ignore_eos bans the same few ids in every
    row of every step, and a copy per step cost half a millisecond of host time."""
    return torch.tensor(ids, device=device)


def _ban(logits: torch.Tensor, batch: SamplingBatch) -> None:
    """-inf at each row's banned ids: one write per distinct set over all of its rows."""
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for row, seq in enumerate(batch.seqs):
        sampling = seq.sampling
        banned = sampling.bad_token_ids
        if seq.num_output_tokens + batch.lag < sampling.min_new_tokens:
            banned = (*banned, *seq.eos_token_ids, *sampling.stop_token_ids)
        if banned:
            rows_of.setdefault(banned, []).append(row)
    for banned, rows in rows_of.items():
        cols = _ids_on(logits.device, banned)
        if len(rows) == logits.shape[0]:
            logits.index_fill_(1, cols, -float("inf"))
            continue
        # Pinned on CUDA, so that the copy does not wait for the steps queued before it.
        index = torch.tensor(rows, pin_memory=logits.is_cuda).to(logits.device, non_blocking=True)
        logits[index[:, None], cols] = -float("inf")


def _apply_token_rules(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    _ban(logits, batch)
    if batch.repetition_penalty is not None:
        for row, seq in enumerate(batch.seqs):
            penalty = float(batch.repetition_penalty[row])
            if penalty == 1.0:
                continue
            seen = torch.tensor(sorted(set(seq.token_ids)), device=logits.device)
            scores = logits[row, seen]
            logits[row, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits


def _candidates(
    logits: torch.Tensor, batch: SamplingBatch
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The tokens each row may draw, best first: their ids [B, n] and logits [B, n], -inf where
    top-k, top-p or min-p drop them (ids None: every token, in id order, none dropped).

    When every sampling row sets a top-k, n is the largest: a `topk` instead of sorting the
    vocabulary, which cost ~30 ms a step at batch 16 on the CPU, and noise for n tokens only.
    """
    vocab = logits.shape[-1]
    if not batch.any_filter:
        return None, logits
    if batch.max_top_k:
        values, ids = logits.topk(min(batch.max_top_k, vocab), dim=-1)
    else:
        values, ids = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(values.shape[-1], device=logits.device)[None, :]
    drop = ranks >= torch.where(batch.top_k > 0, batch.top_k, vocab)[:, None]
    # Top-p and min-p on the distribution renormalised over what top-k keeps, as transformers'
    # warpers, vLLM and lmdeploy chain them.
    kept = values.masked_fill(drop, -float("inf"))
    probs = (kept - kept.logsumexp(dim=-1, keepdim=True)).exp()
    drop |= (probs.cumsum(dim=-1) - probs) > batch.top_p[:, None]
    drop |= probs < batch.min_p[:, None] * probs[:, :1]
    drop[:, 0] = False  # the best token always survives
    return ids, values.masked_fill(drop, -float("inf"))


def _noise(batch: SamplingBatch, shape: torch.Size, device: torch.device) -> torch.Tensor:
    noise = torch.empty(shape, device=device).exponential_()
    for row, seq in enumerate(batch.seqs):
        seed = seq.sampling.random_seed
        if seed is not None and seq.sampling.temperature > 0:
            # Seed by position, and draw for the row's own candidates only (its top-k, or the
            # vocabulary), so that the draw does not depend on who shares the batch.
            n = min(seq.sampling.top_k, shape[1]) if batch.max_top_k else shape[1]
            # manual_seed takes at most 64 bits; seeds go up to 2^63 - 1 (SamplingParams).
            gen = torch.Generator(device=device).manual_seed(
                (seed * 1_000_003 + seq.num_output_tokens + batch.lag) % (1 << 64)
            )
            noise[row, :n] = torch.empty(n, device=device).exponential_(generator=gen)
    return noise


def sample(
    logits: torch.Tensor,
    batch: SamplingBatch,
    process: Callable[[torch.Tensor], None] | None = None,
    token_mask: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """logits: [B, vocab] float32 -> token ids [B] (on the device). `process` edits the logits
    in place after the built-in token rules, before temperature and filters (user processors);
    `token_mask` then masks them in place (a grammar's allowed tokens), so that it has the last
    word over what may be drawn."""
    logits = _apply_token_rules(logits, batch)
    if process is not None:
        process(logits)
    if token_mask is not None:
        token_mask(logits)
    greedy = logits.argmax(dim=-1)
    if batch.all_greedy:
        return greedy
    if logits.is_cuda:  # the fused Triton kernel, where it is faster (CUDA only)
        from . import fused

        if fused.applies(logits, batch):
            return fused.sample(logits, batch)
    temperature = batch.temperature.clamp_min(1e-5)[:, None]
    ids, candidates = _candidates(logits / temperature, batch)
    probs = candidates.softmax(dim=-1)
    pick = (probs / _noise(batch, probs.shape, probs.device)).argmax(dim=-1)
    sampled = pick if ids is None else ids.gather(1, pick[:, None]).squeeze(1)
    return torch.where(batch.temperature == 0, greedy, sampled)


def top_logprobs(
    logits: torch.Tensor, chosen: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of the chosen tokens [B] and the top-k alternatives [B, k] (ids, values)."""
    logprobs = logits.log_softmax(dim=-1)
    values, ids = logprobs.topk(max(k, 1), dim=-1)
    return logprobs.gather(1, chosen[:, None]).squeeze(1), ids, values
