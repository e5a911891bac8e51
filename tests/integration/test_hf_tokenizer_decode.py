"""The Tokenizer port decodes through the Rust tokenizer where transformers' wrapper would only
add its clean-up of spaces: the text must be the wrapper's, window by window, as streaming
decodes it."""

import copy
import random

import pytest

from lmdeploy.adapters.tokenizers.hf_tokenizer import HFTokenizer

TEXT = "Hello, world!  It's 3.5 degrees ; isn't it ? 😆 為什麼 <|im_end|> done.\n\n  end"


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_rust_decode_equals_the_transformers_decode(hf_tokenizer, skip_special_tokens):
    port = HFTokenizer(hf_tokenizer)
    assert port._rust_decode is not None  # the embedded model's tokenizer takes the fast path
    ids = hf_tokenizer.encode(TEXT, add_special_tokens=True)
    rng = random.Random(0)
    windows = [ids] + [ids[i : i + rng.randint(1, 6)] for i in range(len(ids))]
    windows += [[rng.randrange(len(hf_tokenizer)) for _ in range(5)] for _ in range(50)]
    for window in windows:
        expected = hf_tokenizer.decode(window, skip_special_tokens=skip_special_tokens)
        assert port.decode(window, skip_special_tokens) == expected, window


def test_a_tokenizer_that_cleans_up_spaces_decodes_through_transformers(hf_tokenizer):
    cleaning = copy.deepcopy(hf_tokenizer)
    cleaning.clean_up_tokenization_spaces = True
    port = HFTokenizer(cleaning)
    assert port._rust_decode is None
    ids = cleaning.encode(TEXT, add_special_tokens=False)
    assert port.decode(ids) == cleaning.decode(ids, skip_special_tokens=True)
