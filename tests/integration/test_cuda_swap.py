"""On a GPU: preemption by swap (pinned staging, non-blocking copies, CUDA graphs replaying over
swapped-in blocks) gives the output of a cache that never runs short. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

from .test_cuda_engine import _ids, tiny_llama  # noqa: F401  (the fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "cuda_graphs"])
def test_swapping_on_cuda_leaves_every_output_unchanged(tiny_llama, eager, monkeypatch):  # noqa: F811
    path, _ = tiny_llama
    monkeypatch.setenv("LMDEPLOY_ADMISSION_HEADROOM", "0")  # admit into the growth: preempt
    prompts = [_ids(20 + 3 * i, seed=i) for i in range(24)]
    gen = GenerationConfig(max_new_tokens=40, ignore_eos=True)

    def run(**cache):
        config = PytorchEngineConfig(
            dtype="float32", eager_mode=eager, block_size=16, session_len=1024, **cache
        )
        pipe = pipeline(str(path), backend_config=config)
        try:
            return [o.token_ids for o in pipe(prompts, gen_config=gen)], pipe.service.engine.stats()
        finally:
            pipe.close()

    roomy, _ = run(cache_max_entry_count=0.05)
    tight, stats = run(num_gpu_blocks=24, num_cpu_blocks=256)
    print(f"cuda swap ({'eager' if eager else 'graphs'}): {stats}")
    assert tight == roomy
    assert stats.num_swapped_out_seqs > 0 and stats.num_recompute_preemptions == 0
    assert stats.num_free_blocks == stats.num_blocks
    assert stats.num_free_cpu_blocks == stats.num_cpu_blocks
