"""The engine loop and the generation service, run for real over fakes of the ports."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from lmdeploy import GenerationConfig
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.application.configs import ChatTemplateConfig
from lmdeploy.application.detokenizer import (
    DetokenizeState,
    IncrementalDetokenizer,
    detokenize_incrementally,
)
from lmdeploy.application.engine import EngineLoop
from lmdeploy.application.generation import GenerationService
from lmdeploy.application.pipeline import Pipeline
from lmdeploy.domain.block_allocator import BlockAllocator
from lmdeploy.domain.errors import InvalidArgument
from lmdeploy.domain.scheduler import Scheduler, SchedulerConfig

from .fakes import CharTokenizer, CountingRunner


def _pipeline_over(runner: CountingRunner) -> Iterator[Pipeline]:
    """A pipeline over the real engine loop, scheduler and service, with `runner` as the model;
    closed when the fixture that yields from this ends."""
    scheduler = Scheduler(SchedulerConfig(4, 64, 64), BlockAllocator(32, 4))
    engine = EngineLoop(runner, scheduler)
    engine.start()
    service = GenerationService(
        engine, CharTokenizer(), builtin_template(ChatTemplateConfig("base")), session_len=64
    )
    p = Pipeline(service, "fake", engine.stop)
    p.runner, p.engine = runner, engine
    yield p
    p.close()


@pytest.fixture
def pipe():
    yield from _pipeline_over(CountingRunner(num_blocks=32, block_size=4))


def test_counts_up_and_stops_at_max_new_tokens(pipe):
    out = pipe("abc", gen_config=GenerationConfig(max_new_tokens=4))
    assert out.text == "defg" and out.finish_reason == "length"
    assert (
        out.token_ids == [3, 4, 5, 6] and out.input_token_len == 3 and out.generate_token_len == 4
    )


def test_the_runner_is_told_once_when_the_engine_runs_out_of_work(pipe):
    import time

    assert pipe.runner.idles == 0  # no step yet: nothing to release
    pipe("abc", gen_config=GenerationConfig(max_new_tokens=4))
    deadline = time.monotonic() + 5
    while pipe.runner.idles == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # an idle loop must not call it again and again
    assert pipe.runner.idles == 1


def test_eos_stops_and_is_not_returned(pipe):
    out = pipe("x", gen_config=GenerationConfig(max_new_tokens=10, stop_token_ids=[26]))
    assert out.token_ids == [24, 25] and out.finish_reason == "stop"


def test_ignore_eos_runs_past_eos(pipe):
    out = pipe([[98]], gen_config=GenerationConfig(max_new_tokens=4, ignore_eos=True))
    assert out[0].token_ids == [99, 0, 1, 2]


def test_stop_word_truncates_text(pipe):
    out = pipe("a", gen_config=GenerationConfig(max_new_tokens=20, stop_words=["efg"]))
    assert out.text == "bcd" and out.finish_reason == "stop"


def test_many_requests_queue_past_max_batch_size_and_all_blocks_come_back(pipe):
    prompts = ["abcdefghij"[: i + 1] for i in range(10)]
    outs = pipe(prompts, gen_config=GenerationConfig(max_new_tokens=5))
    assert [o.index for o in outs] == list(range(10))
    assert all(len(o.token_ids) == 5 for o in outs)
    assert max(len(step) for step in pipe.runner.plans) <= 4
    stats = pipe.engine.stats()
    assert stats.num_free_blocks == stats.num_blocks and stats.num_running == 0


def test_stream_infer_yields_deltas_that_add_up(pipe):
    deltas = {}
    for r in pipe.stream_infer(["ab", "cd"], gen_config=GenerationConfig(max_new_tokens=3)):
        deltas.setdefault(r.index, []).append(r.text)
    assert "".join(deltas[0]) == "cde" and "".join(deltas[1]) == "efg"


def test_use_tqdm_shows_a_progress_bar_over_the_requests(pipe, capsys):
    prompts = ["ab", "cd", "ef"]
    config = GenerationConfig(max_new_tokens=3)
    quiet = pipe(prompts, gen_config=config)
    assert "Processing" not in capsys.readouterr().err
    shown = pipe(prompts, gen_config=config, use_tqdm=True)
    assert "3/3" in capsys.readouterr().err
    assert [o.text for o in shown] == [o.text for o in quiet] == ["cde", "efg", "ghi"]


def test_batch_outputs_keep_prompt_order_whatever_finishes_first(pipe):
    # The longest request is first and an over-long one (ended at once) sits in the middle.
    configs = [GenerationConfig(max_new_tokens=n) for n in (9, 1, 1, 2)]
    outs = pipe(["ab", "c", "a" * 100, "d"], gen_config=configs)
    assert [o.index for o in outs] == [0, 1, 2, 3] and [o.session_id for o in outs] == [0, 1, 2, 3]
    assert [o.text for o in outs] == ["cdefghijk", "d", "", "ef"]
    assert outs[2].finish_reason == "length" and outs[2].input_token_len == 100


class SlowRunner(CountingRunner):
    """5 ms a step: long enough for a reader on another thread to act while a request runs."""

    def step(self, plan):
        time.sleep(0.005)
        return super().step(plan)


@pytest.fixture
def slow_pipe():
    yield from _pipeline_over(SlowRunner(num_blocks=32, block_size=4))


def test_a_stop_word_stops_its_request_while_the_batch_still_runs(slow_pipe):
    # The stop word is found on the host: the batch must read every stream as it goes, not
    # the second only once the first is done (it would generate until then for nothing).
    configs = [
        GenerationConfig(max_new_tokens=40),
        GenerationConfig(max_new_tokens=40, stop_words=["za"]),  # two tokens: host-side
    ]
    long, stopped = slow_pipe(["a", "x"], gen_config=configs)
    assert long.generate_token_len == 40 and (stopped.text, stopped.finish_reason) == ("y", "stop")
    plans = slow_pipe.runner.plans
    first, second = sorted({seq_id for step in plans for seq_id, _ in step})
    assert sum(any(i == second for i, _ in step) for step in plans) < 15


def test_a_stream_infer_reader_that_stops_cancels_its_requests(slow_pipe):
    deltas = slow_pipe.stream_infer(["a"], gen_config=GenerationConfig(max_new_tokens=60))
    next(deltas)
    deltas.close()
    deadline = time.monotonic() + 5
    while slow_pipe.engine.stats().num_running and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = slow_pipe.engine.stats()
    assert stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks
    assert len(slow_pipe.runner.plans) < 40  # cancelled, not run to its 60 tokens


def test_async_batch_infer(pipe):
    out = asyncio.run(
        pipe.async_batch_infer(["a", "b"], gen_config=GenerationConfig(max_new_tokens=2))
    )
    assert [o.text for o in out] == ["bc", "cd"]


def test_bad_inputs_are_clear_errors(pipe):
    with pytest.raises(InvalidArgument, match="prompts"):
        pipe([])
    with pytest.raises(InvalidArgument, match="prompt"):
        pipe("")
    with pytest.raises(InvalidArgument, match="prompts"):
        pipe(42)


def test_prompt_longer_than_session_len_finishes_with_length(pipe):
    out = pipe("a" * 100)
    assert out.finish_reason == "length" and out.text == "" and out.input_token_len == 100


def test_detokenizer_waits_for_complete_characters():
    class ByteTokenizer(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    detok = IncrementalDetokenizer(ByteTokenizer())
    euro = "€".encode()
    pieces = [detok.push(b) for b in b"a" + euro + b"b"]
    assert pieces == ["a", "", "", "€", "b"]


def test_pushing_a_run_of_tokens_gives_the_text_of_pushing_them_one_by_one():
    class ByteTokenizer(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    reply = list("a€b€cd€".encode())
    one_by_one = IncrementalDetokenizer(ByteTokenizer())
    expected = "".join(one_by_one.push(b) for b in reply)
    for run in (2, 3, 5, len(reply)):  # runs that end inside a character, too
        detok = IncrementalDetokenizer(ByteTokenizer())
        pieces = [detok.push_many(reply[i : i + run]) for i in range(0, len(reply), run)]
        assert "".join(pieces) == expected == "a€b€cd€"
        assert not any("\ufffd" in piece for piece in pieces)  # a broken character waits
    cut = IncrementalDetokenizer(ByteTokenizer())  # a reply that ends inside a character
    assert cut.push_many(list("ab€".encode())[:-1]) == "ab"


def test_detokenize_incrementally_takes_any_number_of_new_ids_per_call():
    """0.6.5's state-passing form: the ids so far each call, a prompt skipped by its offset."""

    class ByteTokenizer(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

        def convert_ids_to_tokens(self, ids):
            return [chr(i) for i in ids]

    prompt, reply = list(b"Q: "), list("a€b€".encode())
    ids, state, pieces = prompt + reply, DetokenizeState(len(prompt)), []
    for end in (4, 4, 5, 7, 8, 9, 11):  # none, part of a character, several at once
        text, state = detokenize_incrementally(ByteTokenizer(), ids[:end], state)
        pieces.append(text)
    assert pieces == ["a", "", "", "€", "b", "", "€"]
    assert state.ids_offset == len(ids) and len(state.prev_tokens) == len(ids)


class BosTokenizer(CharTokenizer):
    """Adds BOS (id 25, 'z') with the special tokens, as Llama's tokenizers do."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [25] * add_special_tokens + super().encode(text)


@pytest.mark.parametrize(
    "template, prompt, ids",
    [
        ("base", "abc", [25, 0, 1, 2]),  # BOS left to the tokenizer, as in 0.6.5
        ("base", "zabc", [25, 0, 1, 2]),  # written in the text too: one BOS kept
    ],
)
def test_a_builtin_template_prompt_gets_the_tokenizers_bos_once(template, prompt, ids):
    service = GenerationService(
        None, BosTokenizer(), builtin_template(ChatTemplateConfig(template)), session_len=64
    )
    assert service.tokenize([{"role": "user", "content": prompt}]) == ids
