"""Split-K paged decode attention against its torch reference and the engine's torch path."""

from __future__ import annotations

import pytest
import torch

from lmdeploy.kernels.paged_decode_attention import (
    paged_decode_attention,
    paged_decode_attention_ref,
)

from ._util import DEVICE, DTYPES, TOL, cuda_only, gpu_cases, random_paged_cache, slots_of

# heads, kv_heads, head_dim, block_size, context_lens, num_splits
CASES = [
    (4, 4, 16, 16, [1, 16, 17, 33], None),  # MHA, exact block boundary, one-token context
    (8, 2, 64, 16, [1, 32, 100, 47], 3),  # GQA 4
    (8, 1, 128, 64, [64, 1, 130], 2),  # GQA 8, dim 128, 64-token blocks
    (12, 3, 32, 64, [5, 200, 64], 1),  # heads not a power of two, no split
    (6, 3, 64, 16, [3, 2, 40], 8),  # more splits than tiles: empty chunks
    *gpu_cases(
        (32, 8, 128, 16, [1, 4096, 777, 2048, 16, 3000, 129, 4000], None),
        (32, 8, 128, 64, [4096, 1, 1024, 2500], 16),
        (28, 4, 128, 16, [513] * 24, None),
        (14, 2, 64, 64, [1000, 64, 3], None),
    ),
]


def _inputs(heads, kv_heads, head_dim, block_size, context_lens, dtype, table_dtype):
    k_cache, v_cache, block_tables, lens = random_paged_cache(
        context_lens, kv_heads, head_dim, block_size, dtype, table_dtype
    )
    q = torch.randn(len(context_lens), heads, head_dim, dtype=dtype, device=DEVICE)
    return q, k_cache, v_cache, block_tables, lens


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim", "block_size", "lens", "splits"), CASES)
def test_matches_reference(heads, kv_heads, head_dim, block_size, lens, splits, dtype):
    torch.manual_seed(0)
    table_dtype = torch.int64 if heads % 3 == 0 else torch.int32
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, head_dim, block_size, lens, dtype, table_dtype
    )
    scale = head_dim**-0.5
    out = paged_decode_attention(q, k_cache, v_cache, tables, context_lens, scale, splits)
    ref = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, scale)
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("splits", [1, 2, 5])
def test_splits_agree(splits):
    torch.manual_seed(1)
    q, k_cache, v_cache, tables, lens = _inputs(
        8, 2, 32, 16, [1, 90, 48], torch.float32, torch.int32
    )
    one = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.3, num_splits=1)
    many = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.3, num_splits=splits)
    torch.testing.assert_close(many, one, **TOL[torch.float32])


def test_strided_query():
    """q as a slice of a fused qkv projection output."""
    torch.manual_seed(2)
    k_cache, v_cache, tables, lens = random_paged_cache([7, 33], 2, 32, 16, torch.float32)
    qkv = torch.randn(2, (8 + 4) * 32, device=DEVICE)
    q = qkv[:, : 8 * 32].view(2, 8, 32)
    out = paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.2, num_splits=2)
    ref = paged_decode_attention_ref(q.contiguous(), k_cache, v_cache, tables, lens, 0.2)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (5, None), (None, 2.0), (17, 1.5)])
@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(4, 4, 16), (8, 2, 16), (8, 1, 64)])
def test_reference_matches_engine(heads, kv_heads, block_size, window, softcap):
    """Our reference and the engine's decode paths (the C kernel where it builds, and the
    torch path) compute the same attention, with a sliding window and a soft cap."""
    from lmdeploy.adapters.engines.pytorch.backends.attention_metadata import AttentionMetadata
    from lmdeploy.adapters.engines.pytorch.backends.torch_native.attention import (
        decode_attention_torch,
        decode_context,
    )
    from lmdeploy.adapters.engines.pytorch.layers.attention import AttentionOptions, paged_attention

    torch.manual_seed(3)
    lens = [1, block_size, 2 * block_size + 3]
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, 64, block_size, lens, torch.float32, torch.int64
    )
    # The engine writes the new token first: hand it the token already in the cache.
    slots = torch.cat([slots_of(tables, block_size, i, [n - 1]) for i, n in enumerate(lens)])
    k_new = k_cache.flatten(0, 1)[slots].clone()
    v_new = v_cache.flatten(0, 1)[slots].clone()
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables,
        context_lens=context_lens.long(),
        query_lens=[1] * len(lens),
        context_lens_list=lens,
        is_decode=True,
        num_cached_list=[n - 1 for n in lens],
    )
    options = dict(sliding_window=window, logit_softcap=softcap)
    engine = paged_attention(
        q, k_new, v_new, k_cache, v_cache, meta, AttentionOptions(0.125, window, softcap)
    )
    args = (q, k_cache, v_cache, tables, context_lens, 0.125)
    ref = paged_decode_attention_ref(*args, **options)
    torch.testing.assert_close(ref, engine, **TOL[torch.float32])
    slots, valid = decode_context(tables, context_lens.long(), max(lens), block_size)
    torch_path = decode_attention_torch(q, k_cache, v_cache, slots, valid, 0.125, window, softcap)
    torch.testing.assert_close(ref, torch_path, **TOL[torch.float32])
    out = paged_decode_attention(*args, **options)
    torch.testing.assert_close(out, engine, **TOL[torch.float32])


# heads, kv_heads, head_dim, block_size, context_lens, num_splits, sliding_window
WINDOW_CASES = [
    (4, 2, 16, 16, [1, 16, 17, 50], None, 16),  # window of one block
    (8, 2, 32, 16, [1, 40, 100], 3, 7),  # window not a multiple of the block, split-K
    (6, 3, 32, 64, [5, 200, 64], 2, 70),  # 64-token blocks, some contexts inside the window
    (4, 1, 16, 64, [3, 130], 4, 1000),  # window longer than every context
    (4, 4, 16, 16, [90, 2], 5, 1),  # the query's own key only
    *gpu_cases((32, 8, 128, 16, [8192, 1, 4097, 3000], None, 4096)),  # Mistral-7B's window
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "block_size", "lens", "splits", "window"), WINDOW_CASES
)
def test_sliding_window_matches_reference(
    heads, kv_heads, head_dim, block_size, lens, splits, window, dtype
):
    torch.manual_seed(4)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, head_dim, block_size, lens, dtype, torch.int32
    )
    scale = head_dim**-0.5
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, context_lens, scale, splits, sliding_window=window
    )
    ref = paged_decode_attention_ref(
        q, k_cache, v_cache, tables, context_lens, scale, sliding_window=window
    )
    torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("splits", [1, 3])
def test_sliding_window_never_reads_keys_before_it(splits):
    """NaN in every slot before the window: a kernel that loads and masks them returns NaN
    (0 x NaN in p.v), one that skips them matches the reference on the clean cache."""
    torch.manual_seed(5)
    lens, window, block_size = [100, 37, 5], 21, 16
    q, k_cache, v_cache, tables, context_lens = _inputs(
        4, 2, 16, block_size, lens, torch.float32, torch.int32
    )
    ref = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, 0.25, window)
    for i, n in enumerate(lens):
        stale = slots_of(tables, block_size, i, torch.arange(max(n - window, 0)))
        k_cache.view(-1, 2, 16)[stale] = float("nan")
        v_cache.view(-1, 2, 16)[stale] = float("nan")
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, context_lens, 0.25, splits, sliding_window=window
    )
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("window", "splits"), [(None, 1), (None, 3), (19, 2)])
def test_logit_softcap_matches_reference(window, splits, dtype):
    """scale 1 makes the raw scores large, so a cap of 5 changes the softmax a lot."""
    torch.manual_seed(6)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        8, 2, 32, 16, [1, 33, 70], dtype, torch.int64
    )
    out = paged_decode_attention(
        q, k_cache, v_cache, tables, context_lens, 1.0, splits, None, window, 5.0
    )
    ref = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, 1.0, window, 5.0)
    uncapped = paged_decode_attention_ref(q, k_cache, v_cache, tables, context_lens, 1.0, window)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    assert not torch.allclose(ref.float(), uncapped.float(), atol=1e-2)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sliding_window": 0}, "sliding_window"),
    ({"logit_softcap": 0.0}, "logit_softcap"),
])  # fmt: skip
def test_rejects_meaningless_options(kwargs, match):
    q, k_cache, v_cache, tables, lens = _inputs(4, 2, 16, 16, [3], torch.float32, torch.int32)
    with pytest.raises(ValueError, match=match):
        paged_decode_attention(q, k_cache, v_cache, tables, lens, 0.25, **kwargs)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(("window", "splits"), [(None, 1), (None, 3), (9, 2)])
def test_quantized_cache_matches_reference(bits, window, splits):
    """Dequantised on load, split-K and a window included; close to the float cache too."""
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    torch.manual_seed(6)
    lens = [1, 16, 45]
    q, k_cache, v_cache, tables, context_lens = _inputs(
        8, 2, 32, 16, lens, torch.float32, torch.int32
    )
    (k_q, k_sz), (v_q, v_sz) = quantize_kv_ref(k_cache, bits), quantize_kv_ref(v_cache, bits)
    quant = dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits, sliding_window=window)
    args = (q, k_q, v_q, tables, context_lens, 0.2)
    out = paged_decode_attention(*args, num_splits=splits, **quant)
    ref = paged_decode_attention_ref(*args, **quant)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    exact = paged_decode_attention_ref(
        q, k_cache, v_cache, tables, context_lens, 0.2, sliding_window=window
    )
    assert (out - exact).abs().max() < (0.05 if bits == 8 else 0.6)


# numpy has float16 but no bfloat16: the interpreter runs the 16-bit codes-as-floats dots in fp16.
QUANT_DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=cuda_only)]


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "softcap"),
    [
        (4, 4, 64, None),  # MHA (group 1), int4's halves of 32 dims
        (8, 1, 64, 2.0),  # GQA 8, softcap on the corrected scores
        (6, 2, 48, None),  # head_dim not a power of two: int4 halves of 24 in tiles of 32
        (4, 2, 16, None),  # int4 halves of 8 dims in the smallest dot tile (16)
    ],
)
def test_quantized_cache_shapes_match_reference(bits, heads, kv_heads, head_dim, softcap, dtype):
    """The codes dotted raw and corrected per token: every head grouping and head size (and,
    on the GPU, p * scale rounded to bf16/fp16 for the V dot)."""
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    torch.manual_seed(7)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, head_dim, 16, [3, 40, 77], dtype, torch.int32
    )
    (k_q, k_sz), (v_q, v_sz) = quantize_kv_ref(k_cache, bits), quantize_kv_ref(v_cache, bits)
    quant = dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits, logit_softcap=softcap)
    args = (q, k_q, v_q, tables, context_lens, head_dim**-0.5)
    for splits in (1, 3):
        out = paged_decode_attention(*args, num_splits=splits, **quant)
        ref = paged_decode_attention_ref(*args, **quant)
        torch.testing.assert_close(out, ref, **TOL[dtype])


@pytest.mark.parametrize("bits", [0, 8, 4])
@pytest.mark.parametrize(("heads", "kv_heads", "window", "splits"), [
    (8, 2, None, 3),  # GQA 4, a split of a short sequence left empty
    (7, 1, 9, 5),  # a group of 7 (padded to 8), a window, more splits than tiles
    (4, 4, None, 2),  # MHA
])  # fmt: skip
def test_splits_combined_in_kernel_match_the_second_launch(
    heads, kv_heads, window, splits, bits, monkeypatch
):
    """The last split's program combines its group's partials (one launch): the same output as
    the reduce launch, and the counters are left zero for the next launch."""
    from lmdeploy.kernels import paged_decode_attention as pda
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    torch.manual_seed(heads * splits + bits)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, 32, 16, [3, 40, 77], torch.float32, torch.int32
    )
    quant = dict(sliding_window=window)
    if bits:
        (k_cache, k_sz), (v_cache, v_sz) = (quantize_kv_ref(c, bits) for c in (k_cache, v_cache))
        quant |= dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits)
    args = (q, k_cache, v_cache, tables, context_lens, 32**-0.5)
    want = paged_decode_attention(*args, num_splits=splits, combine_splits=False, **quant)
    monkeypatch.setattr(pda, "reduce_splits", None)  # a second launch would fail
    for _ in range(2):  # the second launch reuses the counters the first left
        got = paged_decode_attention(*args, num_splits=splits, combine_splits=True, **quant)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not pda._split_counters(q.device, "decode_splits").any()


@pytest.mark.parametrize("dtype", QUANT_DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "window", "softcap", "splits"),
    [
        (8, 2, 64, None, None, 1),  # GQA 4: the heads fill half of the 8-wide N
        (8, 1, 64, None, 2.0, 3),  # GQA 8, softcap on the corrected scores, splits
        (6, 2, 48, 9, None, 2),  # head_dim not a power of two, a window
        (32, 2, 16, None, None, 1),  # GQA 16: N of 16
    ],
)
def test_transposed_quantized_products_match_reference(
    bits, heads, kv_heads, head_dim, window, softcap, splits, dtype
):
    """The transposed tile loop (scores^T = codes q^T, out^T += codes^T (p s)^T) gives the
    reference's output over every option the kernel's own loop takes."""
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    torch.manual_seed(9)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        heads, kv_heads, head_dim, 16, [3, 40, 77], dtype, torch.int32
    )
    (k_q, k_sz), (v_q, v_sz) = quantize_kv_ref(k_cache, bits), quantize_kv_ref(v_cache, bits)
    quant = dict(
        k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=bits, logit_softcap=softcap,
        sliding_window=window,
    )  # fmt: skip
    args = (q, k_q, v_q, tables, context_lens, head_dim**-0.5)
    out = paged_decode_attention(*args, num_splits=splits, transposed=True, **quant)
    torch.testing.assert_close(out, paged_decode_attention_ref(*args, **quant), **TOL[dtype])


def test_transposed_loop_switch_reads_the_environment(monkeypatch):
    """`transposed=None` takes `LMDEPLOY_KV_ATTN_TRANSPOSED`: with it set to 1 the launch equals
    an explicit transposed=True one, bit for bit; a float cache ignores it."""
    from lmdeploy.kernels.kv_quant import quantize_kv_ref

    torch.manual_seed(10)
    q, k_cache, v_cache, tables, context_lens = _inputs(
        8, 2, 32, 16, [5, 40], torch.float32, torch.int32
    )
    (k_q, k_sz), (v_q, v_sz) = quantize_kv_ref(k_cache, 8), quantize_kv_ref(v_cache, 8)
    args = (q, k_q, v_q, tables, context_lens, 0.2)
    quant = dict(k_scale_zero=k_sz, v_scale_zero=v_sz, quant_bits=8)
    explicit = paged_decode_attention(*args, transposed=True, **quant)
    plain = paged_decode_attention(*args, transposed=False, **quant)
    monkeypatch.setenv("LMDEPLOY_KV_ATTN_TRANSPOSED", "1")
    assert torch.equal(paged_decode_attention(*args, **quant), explicit)
    assert not torch.equal(explicit, plain)  # the two loops round differently: the switch is seen
    floats = (q, k_cache, v_cache, tables, context_lens, 0.2)
    assert torch.equal(
        paged_decode_attention(*floats), paged_decode_attention(*floats, transposed=False)
    )
