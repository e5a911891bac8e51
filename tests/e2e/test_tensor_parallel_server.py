"""The api_server started with `--tp 2` on a tiny Llama: the openai client gets tp=1's greedy
tokens, /health answers 200, and 503 once a rank's process is killed."""

from __future__ import annotations

import time

import httpx
import psutil
import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from tests.integration.test_tensor_parallel import CONFIGS
from tests.integration.tiny_models import save_tiny_checkpoint

from .server import api_server

PROMPT = "The capital of France is"
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def llama(tmp_path_factory, hf_tokenizer) -> str:
    directory = tmp_path_factory.mktemp("tp-server-llama")
    save_tiny_checkpoint(CONFIGS["llama"], directory, hf_tokenizer)
    return str(directory)


def _tp1_tokens(path: str, tokenizer) -> list[str]:
    engine = PytorchEngineConfig(device_type="cpu", block_size=16, session_len=512)
    greedy = GenerationConfig(max_new_tokens=MAX_TOKENS, do_sample=False)
    with pipeline(path, backend_config=engine) as pipe:
        ids = pipe(PROMPT, gen_config=greedy).token_ids
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_server_at_tp2_answers_tp1s_tokens_and_turns_unhealthy_when_a_rank_dies(
    llama, hf_tokenizer
):
    from openai import OpenAI

    expected = _tp1_tokens(llama, hf_tokenizer)
    args = (
        "--tp",
        "2",
        "--device-type",
        "cpu",
        "--session-len",
        "512",
        "--cache-block-seq-len",
        "16",
    )
    with api_server(llama, *args) as server:
        client = OpenAI(api_key="none", base_url=f"{server.url}/v1")
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            temperature=0,
            logprobs=True,
        )
        assert [t.token for t in reply.choices[0].logprobs.content] == expected
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200

        # The rank-1 worker: the spawned process (multiprocessing's resource trackers are
        # children too, but not spawn_main ones) that spawned none; the engine process, when
        # the engine runs in its own, is its parent.
        spawned = [
            child
            for child in psutil.Process(server.process.pid).children(recursive=True)
            if "spawn_main" in " ".join(child.cmdline())
        ]
        (rank1,) = [p for p in spawned if not any(c.ppid() == p.pid for c in spawned)]
        rank1.kill()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/health", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "/health still 200 10 s after a rank died"
            time.sleep(0.2)
