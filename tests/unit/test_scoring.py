"""get_ppl's input shapes: ids, a batch of ids, or transformers 5's encoding of them."""

import pytest

from lmdeploy.application.scoring import token_batches
from lmdeploy.domain.errors import InvalidArgument


def test_an_encoding_from_apply_chat_template_is_read_for_its_ids():
    # transformers 5 returns {'input_ids': ..., 'attention_mask': ...} where 4 returned ids.
    encoding = {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}
    assert token_batches(encoding, vocab_size=10) == [[1, 2, 3]]
    assert token_batches([[1, 2], [3, 4]], vocab_size=10) == [[1, 2], [3, 4]]


def test_a_mapping_without_ids_is_refused():
    with pytest.raises(InvalidArgument):
        token_batches({"attention_mask": [1, 1]}, vocab_size=10)
