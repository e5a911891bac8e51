"""The xgrammar backend on the default model's vocabulary: the bitmask against a brute-force
reference, the tool-call formats, errors and the compile cache."""

import json

import pytest
import torch

from lmdeploy.adapters.engines.pytorch.sampling.grammar_mask import (
    apply_token_bitmask,
    apply_token_bitmask_torch,
)
from lmdeploy.adapters.grammar.xgrammar_backend import XGrammarBackend
from lmdeploy.adapters.tool_parsers import get_tool_parser
from lmdeploy.application.ports import GrammarSpec
from lmdeploy.application.tool_grammar import tool_call_spec
from lmdeploy.domain.errors import InvalidArgument

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
PADDING = 13  # logits wider than the vocabulary, as models pad their embedding tables


@pytest.fixture(scope="module")
def backend(hf_tokenizer):
    return XGrammarBackend(hf_tokenizer, len(hf_tokenizer))


def allowed_by_trial(matcher, vocab_size: int) -> torch.Tensor:
    """The reference: every token the matcher accepts from its current state, found by trying
    each one (and rolling it back)."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    for token in range(vocab_size):
        if matcher.accept_token(token):
            allowed[token] = True
            matcher.rollback(1)
    return allowed


def test_masked_logits_equal_a_reference_from_the_allowed_tokens(backend, hf_tokenizer):
    import xgrammar as xgr

    vocab = backend.vocab_size
    compiled = backend.compile(GrammarSpec("json_schema", json.dumps(SCHEMA)))
    prefixes = ['{"name": "Al', '{"name": "Alice", "age": 4', '{"name": "Bo", "age": 12}']
    constraints, references = [], []
    for prefix in prefixes:
        matcher = xgr.GrammarMatcher(compiled)
        assert matcher.accept_string(prefix)
        constraints.append(matcher)
        references.append(allowed_by_trial(matcher, vocab))
    assert 0 < references[0].sum() < vocab and references[2].nonzero().flatten().tolist() == [
        hf_tokenizer.eos_token_id
    ]
    logits = torch.randn(len(prefixes) + 1, vocab + PADDING)  # the last row is unconstrained
    bitmask = torch.zeros(logits.shape[0], -(-vocab // 32), dtype=torch.int32)
    for row, matcher in enumerate(constraints):
        matcher.fill_next_token_bitmask(bitmask, row)
    rows = list(range(len(prefixes)))
    expected = logits.clone()
    for row, allowed in enumerate(references):
        expected[row, :vocab] = expected[row, :vocab].masked_fill(~allowed, -float("inf"))
        expected[row, vocab:] = -float("inf")
    fast, portable = logits.clone(), logits.clone()
    apply_token_bitmask(fast, bitmask, rows)
    apply_token_bitmask_torch(portable[:, :vocab], bitmask, rows)
    portable[rows, vocab:] = -float("inf")
    # xgrammar's own kernel (the one CUDA runs) agrees on the same rows.
    kernel = logits.clone()
    xgr.apply_token_bitmask_inplace(kernel, bitmask, vocab_size=vocab, indices=rows)
    kernel[rows, vocab:] = -float("inf")
    for masked in (fast, portable, kernel):
        torch.testing.assert_close(masked, expected, rtol=0, atol=0)


@pytest.mark.parametrize("parser", ["hermes", "llama3", "internlm2"])
def test_tool_call_grammars_take_well_formed_calls_and_refuse_bad_arguments(backend, parser):
    numbers = {
        "type": "object",
        "properties": {"a": {"type": "int"}, "b": {"type": "int"}},
        "required": ["a", "b"],
    }
    tools = [
        {"type": "function", "function": {"name": n, "parameters": numbers}} for n in ("add", "mul")
    ]
    call_format = get_tool_parser(parser).call_format
    one, several = tool_call_spec(call_format, tools), tool_call_spec(call_format, tools, True)

    def call(name: str, arguments: str) -> str:
        head, tail = one.tool_calls.call_parts(name)
        return head + arguments + tail

    good = call_format.prefix + call("add", '{"a": 3, "b": 5}')
    two = good + call_format.separator + call("mul", '{"a": 8, "b": 2}')
    if parser == "llama3":  # the format llama3_1's prompt asks for (0.6.5)
        assert good == '<function=add>{"a": 3, "b": 5}</function>'
    for spec, text, ok in [
        (one, good, True),
        (several, two, True),
        (one, two, False),
        (several, call_format.prefix + call("add", '{"a": "3", "b": 5}'), False),
        (several, call_format.prefix + call("div", '{"a": 3, "b": 5}'), False),
    ]:
        constraint = backend.constraint(spec, frozenset({2}))
        assert constraint._matcher.accept_string(text) is ok, text
        if ok:  # complete: only the stop token may follow, and it ends the grammar
            assert constraint.accept(2) and constraint.is_terminated()


@pytest.mark.parametrize(
    "spec",
    [
        GrammarSpec("regex", "call me ([A-Z"),
        GrammarSpec("json_schema", json.dumps({"type": "frob"})),
        GrammarSpec("json_schema", json.dumps([1, 2])),
    ],
)
def test_a_grammar_that_cannot_compile_is_an_invalid_response_format(backend, spec):
    with pytest.raises(InvalidArgument) as err:
        backend.constraint(spec, frozenset({2}))
    assert err.value.argument == "response_format"


def test_a_spec_compiles_once_and_each_request_gets_its_own_matcher(backend):
    spec = GrammarSpec("regex", "(yes|no)")
    assert backend.compile(spec) is backend.compile(GrammarSpec("regex", "(yes|no)"))
    one, two = backend.constraint(spec, frozenset({2})), backend.constraint(spec, frozenset({2}))
    assert one.accept(backend._tokenizer.encode("yes", add_special_tokens=False)[0])
    assert one.num_accepted == 1 and two.num_accepted == 0


def test_bounded_strings_admit_no_raw_control_characters():
    """xgrammar 0.2's maxLength rule lets a raw tab into a string, which is not JSON; the
    backend rewrites bounded strings into a pattern with the same bounds and no controls."""
    import json

    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as accepts

    from lmdeploy.adapters.grammar.xgrammar_backend import bounded_strings_without_controls

    schema = {
        "type": "object",
        "properties": {"tag": {"type": "string", "minLength": 1, "maxLength": 4}},
        "required": ["tag"],
    }
    fixed = bounded_strings_without_controls(schema)
    grammar = xgr.Grammar.from_json_schema(json.dumps(fixed), any_whitespace=False)
    assert accepts(grammar, '{"tag": "abcd"}')
    assert not accepts(grammar, '{"tag": "ab\tc"}')
    assert not accepts(grammar, '{"tag": "abcde"}')
    assert not accepts(grammar, '{"tag": ""}')
    raw = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    assert accepts(raw, '{"tag": "ab\tc"}'), "xgrammar fixed its rule: drop the rewrite"
