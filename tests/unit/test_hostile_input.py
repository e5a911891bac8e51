"""Values no request may pass: ids outside the vocabulary, integers the engine cannot hold,
text that is not Unicode, unbounded lists. Each is an InvalidArgument naming the field."""

import pytest

from lmdeploy import GenerationConfig
from lmdeploy.domain.errors import InvalidArgument

from .test_generation import pipe  # noqa: F401  (fixture)


@pytest.mark.parametrize("ids", [[999999], [-1], [1, 2, 100]])
def test_token_ids_outside_the_vocabulary_are_refused(pipe, ids):  # noqa: F811
    with pytest.raises(InvalidArgument, match="prompt.*outside the vocabulary"):
        pipe([ids], gen_config=GenerationConfig(max_new_tokens=2))
    assert pipe.runner.plans == []  # nothing reached the engine


@pytest.mark.parametrize("field", ["stop_token_ids", "bad_token_ids"])
def test_stop_and_bad_token_ids_outside_the_vocabulary_are_refused(pipe, field):  # noqa: F811
    with pytest.raises(InvalidArgument, match=field):
        pipe("abc", gen_config=GenerationConfig(max_new_tokens=2, **{field: [100]}))


def test_get_ppl_refuses_ids_outside_the_vocabulary(pipe):  # noqa: F811
    with pytest.raises(InvalidArgument, match="input_ids"):
        pipe.get_ppl([[1, 999999]])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"random_seed": 1 << 63}, "random_seed"),
        ({"random_seed": -1}, "random_seed"),
        ({"top_k": 1 << 63}, "top_k"),
        ({"max_new_tokens": 1 << 64}, "max_new_tokens"),
        ({"min_new_tokens": 1 << 40}, "min_new_tokens"),
        ({"n": 1 << 20}, "n"),
        ({"n": True}, "n"),
        ({"top_k": 2.5}, "top_k"),
        ({"stop_words": ["a"] * 100_000}, "stop_words"),
        ({"stop_words": ["x" * 10_000]}, "stop_words"),
        ({"stop_words": [""]}, "stop_words"),
        ({"bad_words": "abc"}, "bad_words"),
    ],
)
def test_integers_and_lists_beyond_what_the_engine_holds_are_refused(kwargs, field):
    with pytest.raises(InvalidArgument, match=field):
        GenerationConfig(**kwargs)


def test_the_largest_seed_is_accepted():
    assert GenerationConfig(random_seed=(1 << 63) - 1).random_seed == (1 << 63) - 1


@pytest.mark.parametrize(
    "prompt, kwargs, field",
    [
        ("a\ud800b", {}, "messages"),
        ([{"role": "user", "content": "a\udfffb"}], {}, "messages"),
        ("abc", {"stop_words": ["x\ud800"]}, "stop"),
        ("abc", {"bad_words": ["\udc00"]}, "bad_words"),
    ],
)
def test_lone_surrogates_are_refused(pipe, prompt, kwargs, field):  # noqa: F811
    with pytest.raises(InvalidArgument, match=f"{field}.*surrogate"):
        pipe(prompt, gen_config=GenerationConfig(max_new_tokens=2, **kwargs))


def test_a_raw_prompt_with_a_surrogate_is_refused(pipe):  # noqa: F811
    with pytest.raises(InvalidArgument, match="prompt.*surrogate"):
        pipe("a\ud800", do_preprocess=False)
