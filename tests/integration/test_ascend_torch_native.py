"""The Ascend adapter's engine, run end to end on the CPU: the NPU platform (with a stand-in
torch_npu runtime, the CPU as its device) drives the build, and the layers take the torch-native
path the NPU takes. Its greedy ids equal the default CPU path's on the embedded model.

Not a run on Ascend hardware: the NPU's own ops are not exercised here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmdeploy import GenerationConfig
from tests.integration.ascend_on_cpu import FREE_BYTES

MAX_NEW_TOKENS = 12
NUM_PROMPTS = 6  # 1 to 129 tokens: within a block, at and across its 64-token boundary
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prompts(prompt_ids):
    return prompt_ids[:NUM_PROMPTS]


@pytest.fixture(scope="module")
def npu_run(prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ascend") / "report.json"
    env = {**os.environ, "LMDEPLOY_CPU_KERNELS": "0"}
    request = json.dumps({"prompts": prompts, "max_new_tokens": MAX_NEW_TOKENS})
    subprocess.run(
        [sys.executable, "-m", "tests.integration.ascend_on_cpu", str(out)],
        input=request,
        text=True,
        cwd=REPO,
        env=env,
        check=True,
        timeout=600,
    )
    return json.loads(out.read_text())


def test_greedy_ids_equal_the_default_path(npu_run, default_pipe, prompts):
    gen = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True)
    expected = [r.token_ids for r in default_pipe(prompts, gen_config=gen)]
    for i, (got, want) in enumerate(zip(npu_run["token_ids"], expected, strict=True)):
        assert got == want, f"prompt {i} ({len(prompts[i])} tokens) diverged"


def test_the_npu_platform_drove_the_build(npu_run):
    assert npu_run["selected"] == "NpuPlatform"
    assert npu_run["graphs"] is False
    assert npu_run["max_batch_size"] == 16  # 0.6.5's default for 'ascend'
    assert npu_run["cache_device"] == "cpu"
    assert npu_run["cpu_kernels"] is False and npu_run["packed_linears"] == 0
    assert npu_run["calls"]["synchronize"] >= 1
    # The cache sized from the runtime's free memory: cache_max_entry_count (0.8) of it.
    assert npu_run["calls"]["mem_get_info"] == 1
    assert npu_run["num_blocks"] == int(FREE_BYTES * 0.8) // npu_run["block_bytes"]
