"""How rank 0 hands each model call to the other tensor-parallel ranks, and how they serve it.

The engine loop, scheduler and sampler run once, on rank 0. Every time its runner calls the
model, rank 0 first broadcasts the call: a fixed-size header (the op and the sizes), then the
flat tensors the runner already built (token ids, slots, block tables, lengths packed in one
int64 tensor; cos/sin in one float tensor). The other ranks rebuild the attention metadata from
them and make the same call, so every collective inside the model pairs up. Three broadcasts a
step, of a few KB: no Python object crosses a process.

Ops: FORWARD (an eager forward pass), LOGITS (the LM head over hidden rows that rank 0 chose),
CAPTURE / REPLAY (the decode CUDA graphs: each rank captures its own, in the same order, and
replays its bucket after receiving rank 0's staged inputs), SWAP (KV blocks to and from host
memory), STOP.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..backends.attention_metadata import AttentionMetadata
from ..layers.attention import prepare_metadata
from ..models.base import CausalLM, KVCaches
from ..runner.cuda_graph import DecodeGraphs

BlockPairs = list[tuple[int, int]]

_HEADER = 8


class Op(enum.IntEnum):
    STOP = 0
    FORWARD = 1
    LOGITS = 2
    CAPTURE = 3
    REPLAY = 4
    SWAP = 5


class StepChannel:
    """Rank 0's end and the other ranks' end share the broadcast primitives."""

    def __init__(self, device: torch.device, group: dist.ProcessGroup | None = None) -> None:
        self.device, self.group = device, group

    def bcast(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.broadcast(tensor, src=0, group=self.group)
        return tensor

    def send_header(self, op: Op, *fields: int) -> None:
        values = [int(op), *fields] + [0] * (_HEADER - 1 - len(fields))
        self.bcast(torch.tensor(values, dtype=torch.int64, device=self.device))

    def recv_header(self) -> list[int]:
        return self.bcast(torch.empty(_HEADER, dtype=torch.int64, device=self.device)).tolist()

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return self.bcast(torch.empty(shape, dtype=dtype, device=self.device))


def _pack_ints(
    input_ids: torch.Tensor, meta: AttentionMetadata, device: torch.device
) -> torch.Tensor:
    host = torch.tensor(
        meta.query_lens + meta.num_cached_list + meta.context_lens_list, dtype=torch.int64
    ).to(device)
    return torch.cat(
        [
            input_ids.to(torch.int64),
            meta.slot_mapping,
            meta.block_tables.flatten(),
            meta.context_lens,
            host,
        ]
    )


class ModelBroadcaster(torch.nn.Module):
    """Rank 0's model as its runner sees it: each call is first sent to the other ranks."""

    def __init__(self, model: CausalLM, channel: StepChannel) -> None:
        super().__init__()
        self.inner = model
        self.channel = channel
        self.config = model.config

    def forward(self, input_ids, cos, sin, kv_caches: KVCaches, meta: AttentionMetadata):
        tokens, seqs = input_ids.shape[0], meta.block_tables.shape[0]
        width = meta.block_tables.shape[1]
        self.channel.send_header(Op.FORWARD, tokens, seqs, width, cos.shape[-1], meta.is_decode)
        self.channel.bcast(_pack_ints(input_ids, meta, self.channel.device))
        self.channel.bcast(torch.stack([cos, sin]).contiguous())
        return self.inner(input_ids, cos, sin, kv_caches, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        self.channel.send_header(Op.LOGITS, *hidden.shape)
        self.channel.bcast(hidden.contiguous())
        return self.inner.compute_logits(hidden)

    def capture(self, max_batch_size: int, max_blocks: int) -> None:
        self.channel.send_header(Op.CAPTURE, max_batch_size, max_blocks)

    def replay(self, size: int, staged: torch.Tensor) -> None:
        self.channel.send_header(Op.REPLAY, size)
        self.channel.bcast(staged)

    def swap(self, out: BlockPairs, into: BlockPairs) -> None:
        if not out and not into:
            return
        self.channel.send_header(Op.SWAP, len(out), len(into))
        pairs = [*out, *into]
        self.channel.bcast(torch.tensor(pairs, dtype=torch.int64, device=self.channel.device))

    def stop(self) -> None:
        self.channel.send_header(Op.STOP)


def _unpack_forward(
    header: list[int], channel: StepChannel, dtype: torch.dtype, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    _, tokens, seqs, width, rot_dim, is_decode, *_ = header
    ints = channel.recv((2 * tokens + seqs * width + 4 * seqs,), torch.int64)
    ids, slots, tables, lens, host = ints.split([tokens, tokens, seqs * width, seqs, 3 * seqs])
    lists = host.tolist()
    query_lens, cached, context = lists[:seqs], lists[seqs : 2 * seqs], lists[2 * seqs :]
    cos_sin = channel.recv((2, tokens, rot_dim), dtype)
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables.view(seqs, width),
        context_lens=lens,
        query_lens=query_lens,
        context_lens_list=context,
        is_decode=bool(is_decode),
        num_cached_list=cached,
    )
    prepare_metadata(meta, block_size)
    return ids, cos_sin[0], cos_sin[1], meta


def serve(
    model: CausalLM,
    kv_caches: KVCaches,
    channel: StepChannel,
    dtypes: tuple[torch.dtype, torch.dtype],
    block_size: int,
    make_graphs: Callable[[int, int], DecodeGraphs],
    swap: Callable[[BlockPairs, BlockPairs], None] | None,
) -> None:
    """A non-zero rank's loop: make each call rank 0 announces until it says STOP.
    `dtypes`: the model's and the rotary tables'. `make_graphs(max_batch_size, max_blocks)`
    captures this rank's decode graphs."""
    model_dtype, rope_dtype = dtypes
    graphs = None
    while True:
        header = channel.recv_header()
        op = Op(header[0])
        if op is Op.STOP:
            return
        if op is Op.FORWARD:
            ids, cos, sin, meta = _unpack_forward(header, channel, rope_dtype, block_size)
            model(ids, cos, sin, kv_caches, meta)
        elif op is Op.LOGITS:
            hidden = channel.recv((header[1], header[2]), model_dtype)
            model.compute_logits(hidden)
        elif op is Op.CAPTURE:
            graphs = make_graphs(header[1], header[2])
        elif op is Op.REPLAY:
            assert graphs is not None, "rank 0 replays only graphs it asked to capture"
            channel.bcast(graphs.inputs.staged)
            graphs.replay(header[1])
        elif op is Op.SWAP:
            pairs = channel.recv((header[1] + header[2], 2), torch.int64).tolist()
            out, into = (
                [tuple(p) for p in pairs[: header[1]]],
                [tuple(p) for p in pairs[header[1] :]],
            )
            assert swap is not None, "rank 0 swaps only with host blocks configured"
            swap(out, into)
