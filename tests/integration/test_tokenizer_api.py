"""`lmdeploy.Tokenizer` / `lmdeploy.tokenizer` as LMDeploy 0.6.5's users call them, on the
embedded default model's tokenizer."""

import random

import pytest

import lmdeploy
from lmdeploy.tokenizer import DetokenizeState, HuggingFaceTokenizer, Tokenizer

TEXT = " hi, this is a test 😆😆! 為什麼我還在用繁體字 😆😆       " * 5


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer("SmolLM2-135M-Instruct")


def _stream(tok, ids, interval, skip_special_tokens, state, seed=0):
    """Text from detokenize_incrementally fed `interval` more ids per call, with some calls
    bringing none (as 0.6.5's engine does under load)."""
    rng, out = random.Random(seed), ""
    start = state.ids_offset
    for i in range(start, len(ids), interval):
        end = i + interval
        if end < len(ids) and rng.randint(1, 10) < 4:
            end -= interval
        text, state = tok.detokenize_incrementally(ids[:end], state, skip_special_tokens)
        out += text
    return out


@pytest.mark.parametrize("interval", [1, 3])
@pytest.mark.parametrize("add_special_tokens", [True, False])
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_streamed_text_equals_the_whole_decode(
    tokenizer, interval, add_special_tokens, skip_special_tokens
):
    # 0.6.5's tests/test_lmdeploy/test_tokenizer.py, on the model that is here.
    tok = tokenizer.model
    ids = tok.encode(TEXT, False, add_special_tokens=add_special_tokens)
    whole = tok.decode(ids, skip_special_tokens=skip_special_tokens)
    assert _stream(tok, ids, interval, skip_special_tokens, DetokenizeState()) == whole
    assert "😆" in whole and "繁體字" in whole


def test_streaming_after_a_prompt_yields_only_the_new_text(tokenizer):
    prompt = tokenizer.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    reply = tokenizer.encode("Hello! 😆 你好", add_bos=False)
    state = DetokenizeState(len(prompt))
    text = _stream(tokenizer, prompt + reply, 2, True, state)
    assert text == "Hello! 😆 你好"


def test_special_tokens_are_kept_or_skipped_in_the_stream(tokenizer):
    ids = tokenizer.encode("<|im_start|>assistant\nhi<|im_end|>")
    kept = _stream(tokenizer, ids, 1, False, DetokenizeState())
    skipped = _stream(tokenizer, ids, 1, True, DetokenizeState())
    assert (kept, skipped) == ("<|im_start|>assistant\nhi<|im_end|>", "assistant\nhi")


def test_encode_decode_and_the_ids(tokenizer):
    ids = tokenizer.encode("Shanghai is")
    assert tokenizer.decode(ids) == "Shanghai is"
    assert tokenizer.decode(ids, offset=1).strip() == tokenizer.decode(ids[1:]).strip()
    assert tokenizer.eos_token_id == tokenizer.model.model.eos_token_id is not None
    assert tokenizer.vocab_size == 49152  # SmolLM2's base vocabulary
    assert tokenizer(["a b", "c"])["input_ids"] == [tokenizer.encode(s) for s in ["a b", "c"]]


def test_decode_from_an_offset_keeps_the_word_boundary(tokenizer):
    ids = tokenizer.encode("hello world")
    assert tokenizer.decode(ids, offset=1) == " world"


def test_add_bos_false_drops_a_leading_bos(tokenizer):
    hf = tokenizer.model
    bos = hf.bos_token_id
    ids = hf.encode(hf.model.bos_token + "hi")
    assert ids[0] == bos
    assert hf.encode(hf.model.bos_token + "hi", add_bos=False) == ids[1:]
    # Tokenizer.encode keeps one BOS where two would come.
    assert tokenizer.encode(hf.model.bos_token * 2 + "hi")[:2] != [bos, bos]


def test_indexes_containing_token_for_stop_words(tokenizer):
    dot = tokenizer.indexes_containing_token(".")
    assert dot and all(tokenizer.decode([i]) == "." for i in dot)
    assert tokenizer.indexes_containing_token("<|im_end|>") == [tokenizer.encode("<|im_end|>")[0]]
    # A word of several tokens cannot be a stop token.
    assert tokenizer.indexes_containing_token("Shanghai is lovely") == []
    assert tokenizer.indexes_containing_token(" ") is not None


def test_a_tokenizer_directory_loads_as_in_0_6_5(tokenizer, tmp_path):
    tokenizer.model.model.save_pretrained(str(tmp_path))
    from_dir = HuggingFaceTokenizer(str(tmp_path))
    assert from_dir.encode(TEXT) == tokenizer.encode(TEXT)


def test_a_missing_local_path_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(str(tmp_path / "missing" / "model"))


def test_the_public_names():
    assert lmdeploy.Tokenizer is Tokenizer
    assert lmdeploy.version_info == tuple(int(part) for part in lmdeploy.__version__.split("."))
