"""LoRA without a model: the prefix cache is keyed by adapter, the scheduler holds back a
request whose adapter would exceed the runner's resident slots (back-pressure, no error), and
the CLI's --adapters flag."""

from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.sampling_params import SamplingParams
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig
from lmdeploy.domain.sequence import Sequence, SequenceStatus


def seq_of(tokens, adapter=None):
    return Sequence(
        list(tokens), SamplingParams(max_new_tokens=4), max_len=10_000, adapter_name=adapter
    )


def computed(alloc, seq):
    alloc.allocate(seq)
    seq.num_cached_tokens = seq.num_tokens
    alloc.register_computed(seq)


def test_prefix_blocks_are_shared_only_under_the_same_adapter():
    alloc = BlockAllocator(num_blocks=16, block_size=4, enable_prefix_caching=True)
    computed(alloc, seq_of(range(10), "a"))
    for adapter, hit in ((None, 0), ("b", 0), ("a", 8)):
        seq = seq_of(range(10), adapter)
        alloc.allocate(seq)
        assert seq.num_cached_tokens == hit, adapter
        alloc.free(seq)


def test_a_request_for_a_third_adapter_waits_for_a_free_slot():
    sched = Scheduler(
        SchedulerConfig(
            max_batch_size=8, max_num_batched_tokens=64, max_model_len=1000, max_adapters=2
        ),
        BlockAllocator(32, 4),
    )
    a, b, base, c, a2 = (seq_of(range(1, 5), n) for n in ("a", "b", None, "c", "a"))
    for seq in (a, b, base, c, a2):
        sched.add(seq)
    plan = sched.schedule()
    # c waits; a2 behind it runs on a's resident adapter rather than queue behind c
    assert plan.seqs == [a, b, base, a2]
    assert c.status is SequenceStatus.WAITING
    while not (a.is_finished and a2.is_finished):
        plan = sched.schedule()
        sched.postprocess(plan, [7] * len(plan.seqs))
    plan = sched.schedule()
    assert c in plan.seqs and len({s.adapter_name for s in sched.running} - {None}) <= 2


def test_cli_adapters_are_name_path_pairs_or_one_bare_path():
    import argparse

    import pytest

    from lmdeploy.adapters.cli.options import add_engine_options, engine_config_from

    parser = argparse.ArgumentParser()
    add_engine_options(parser)

    def parse(*argv):
        return engine_config_from(parser.parse_args(list(argv)))

    config = parse("--adapters", "a=/x", "b=/y", "--max-loras", "1")
    assert config.adapters == {"a": "/x", "b": "/y"} and config.max_loras == 1
    assert parse("--adapters", "/only").adapters == {"default": "/only"}
    assert parse().adapters is None
    with pytest.raises(SystemExit, match="name=path"):
        parse("--adapters", "a=/x", "/y")
    with pytest.raises(SystemExit, match="pytorch backend only"):
        parse("--backend", "turbomind", "--adapters", "a=/x")
