"""Tensor parallelism through Ray on a local head with two CPUs: ranks 1..tp-1 are Ray actors
placed by a placement group, gloo carries the tensors. tp=2 gives tp=1's greedy ids on a tiny
Llama, and an actor that dies fails the requests in flight within seconds."""

from __future__ import annotations

import time

import psutil
import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidConfig

from .test_tensor_parallel import CONFIGS, GREEDY_64, PROMPTS
from .tiny_models import save_tiny_checkpoint

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def llama(tmp_path_factory, hf_tokenizer) -> str:
    directory = tmp_path_factory.mktemp("tp-ray-llama")
    save_tiny_checkpoint(CONFIGS["llama"], directory, hf_tokenizer)
    return str(directory)


def _engine(tp: int, **kw) -> PytorchEngineConfig:
    return PytorchEngineConfig(tp=tp, device_type="cpu", block_size=16, session_len=512, **kw)


def _rank_actors() -> list[psutil.Process]:
    """The processes of the Ray actors serving ranks (Ray titles them after the method)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::_Rank"):
            found.append(proc)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tp2_through_ray_gives_the_greedy_ids_of_tp1(local_ray, llama):
    with pipeline(llama, backend_config=_engine(1)) as pipe:
        single = [out.token_ids for out in pipe(PROMPTS, gen_config=GREEDY_64)]
    ray_engine = _engine(2, distributed_executor_backend="ray")
    with pipeline(llama, backend_config=ray_engine) as pipe:
        assert len(_rank_actors()) == 1
        split = [out.token_ids for out in pipe(PROMPTS, gen_config=GREEDY_64)]
    assert split == single
    # Closing the engine ends the actors and frees the placement group's two CPUs.
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


@pytest.mark.timeout(120)
def test_an_actor_that_dies_fails_the_requests_in_flight_within_seconds(local_ray, llama):
    long = GenerationConfig(max_new_tokens=400, do_sample=False, ignore_eos=True)
    with pipeline(llama, backend_config=_engine(2, distributed_executor_backend="ray")) as pipe:
        stream = pipe.stream_infer(PROMPTS[0], gen_config=long)
        for _ in range(3):
            next(stream)
        (actor,) = _rank_actors()
        actor.kill()
        killed = time.monotonic()
        last = list(stream)[-1]
        assert time.monotonic() - killed < 10
        assert last.finish_reason == "error"
        assert pipe(PROMPTS[1], gen_config=GREEDY_64).finish_reason == "error"


def test_more_nodes_than_the_cluster_has_are_refused_naming_ray_start(local_ray, llama):
    with pytest.raises(InvalidConfig, match=r"nnodes=2 but the Ray cluster has 1 node.*ray start"):
        pipeline(llama, backend_config=_engine(2, nnodes=2))
