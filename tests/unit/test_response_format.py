"""response_format, forced tool calls and max_log_len in the application, over fakes of the ports."""

import json
import logging

import pytest

from lmdeploy import GenerationConfig
from lmdeploy.application.chat_template import builtin_template
from lmdeploy.application.configs import ChatTemplateConfig
from lmdeploy.application.generation import GenerationService
from lmdeploy.application.ports import GrammarSpec
from lmdeploy.application.response_format import CONSTRAINT, parse_response_format
from lmdeploy.application.tool_grammar import ToolCallFormat, normalize_schema, tool_call_spec
from lmdeploy.application.tools import prepare_chat
from lmdeploy.domain.errors import InvalidArgument

from .fakes import CharTokenizer

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


class FakeConstraint:
    def __init__(self, spec: GrammarSpec, stop: frozenset[int]) -> None:
        self.spec, self.stop = spec, stop


class FakeGrammar:
    """Compiles anything but a regex that reads 'BAD'; records what it compiled."""

    def __init__(self) -> None:
        self.specs: list[GrammarSpec] = []

    def constraint(self, spec: GrammarSpec, stop_token_ids: frozenset[int]) -> FakeConstraint:
        if spec.source == "BAD":
            raise InvalidArgument("response_format", "cannot compile the regex grammar")
        self.specs.append(spec)
        return FakeConstraint(spec, stop_token_ids)


def service(grammar=None, max_log_len=None, template="base") -> GenerationService:
    chat = builtin_template(ChatTemplateConfig(template))
    return GenerationService(
        None, CharTokenizer(), chat, session_len=100_000, grammar=grammar, max_log_len=max_log_len
    )


@pytest.mark.parametrize(
    "response_format, kind",
    [
        ({"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}, "json_schema"),
        ({"type": "json_object"}, "json_object"),
        ({"type": "regex_schema", "regex_schema": "call me [A-Za-z]{1,10}"}, "regex"),
    ],
)
def test_each_documented_type_becomes_its_grammar(response_format, kind):
    spec = parse_response_format(response_format)
    assert spec.kind == kind
    if kind == "json_schema":
        assert json.loads(spec.source) == SCHEMA


def test_text_and_none_are_unconstrained():
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "xml"},
        {"schema": SCHEMA},
        "json",
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"name": "t"}},
        {"type": "json_schema", "json_schema": {"name": "t", "schema": "not a schema"}},
        {"type": "regex_schema"},
        {"type": "regex_schema", "regex_schema": ""},
    ],
)
def test_a_malformed_response_format_fails_in_the_config(bad):
    with pytest.raises(InvalidArgument) as err:
        GenerationConfig(response_format=bad)
    assert err.value.argument == "response_format"


def test_prepare_attaches_a_fresh_constraint_that_stops_on_eos_and_stop_tokens():
    grammar = FakeGrammar()
    svc = service(grammar)
    config = GenerationConfig(
        response_format={"type": "regex_schema", "regex_schema": "[a-z]+"}, stop_token_ids=[5]
    )
    first, second = (svc.prepare("abc", config, do_preprocess=False) for _ in range(2))
    one, two = first.sampling.extra[CONSTRAINT], second.sampling.extra[CONSTRAINT]
    assert one is not two and one.spec == two.spec == GrammarSpec("regex", "[a-z]+")
    assert one.stop == frozenset({0, 5})  # the tokenizer's EOS and the stop token


def test_without_response_format_nothing_is_compiled():
    grammar = FakeGrammar()
    request = service(grammar).prepare("abc", GenerationConfig(), do_preprocess=False)
    assert CONSTRAINT not in request.sampling.extra and grammar.specs == []


@pytest.mark.parametrize(
    "config",
    [
        GenerationConfig(response_format={"type": "regex_schema", "regex_schema": "BAD"}),
        GenerationConfig(response_format={"type": "json_object"}, ignore_eos=True),
        GenerationConfig(response_format={"type": "json_object"}, min_new_tokens=3),
    ],
)
def test_a_grammar_that_cannot_hold_fails_when_the_request_is_prepared(config):
    with pytest.raises(InvalidArgument) as err:
        service(FakeGrammar()).prepare("abc", config, do_preprocess=False)
    assert err.value.argument == "response_format"


def test_a_model_without_a_vocabulary_cannot_constrain():
    with pytest.raises(InvalidArgument, match="response_format"):
        service(None).prepare("abc", GenerationConfig(response_format={"type": "json_object"}))


# -- forced tool calls ---------------------------------------------------------------------


def tool(name: str, parameters: dict | None = None) -> dict:
    function = {"name": name, "description": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


NUMBERS = {
    "type": "object",
    "properties": {"a": {"type": "int"}, "b": {"type": ["int", "null"]}},
    "required": ["a"],
}
TOOLS = [tool("add", NUMBERS), tool("now")]


class Parser:
    markers = ("<tool_call>",)
    skip_special_tokens = True
    call_format = ToolCallFormat(begin="<tool_call>\n", end="\n</tool_call>")


def prepared(tool_choice, grammar, parallel=None, **config):
    svc = service(grammar, template="smollm2")
    config = GenerationConfig(**config)
    return prepare_chat(svc, "hi", config, TOOLS, tool_choice, lambda _: Parser(), parallel)


def test_aliased_type_names_become_json_schema_types():
    assert normalize_schema(NUMBERS)["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": ["integer", "null"]},
    }


def test_a_required_tool_choice_compiles_every_tool_in_the_parsers_format():
    grammar = FakeGrammar()
    request, _ = prepared("required", grammar)
    calls = request.sampling.extra[CONSTRAINT].spec.tool_calls
    assert (calls.begin, calls.end, calls.arguments_key) == (
        "<tool_call>\n",
        "\n</tool_call>",
        "arguments",
    )
    assert [name for name, _ in calls.functions] == ["add", "now"]
    assert not calls.parallel  # one call: a small model would repeat it to the length limit
    assert json.loads(calls.functions[0][1]) == normalize_schema(NUMBERS)
    assert json.loads(calls.functions[1][1]) == {"type": "object"}  # no parameters: any object


def test_a_named_tool_choice_compiles_that_tool_only():
    grammar = FakeGrammar()
    named = {"type": "function", "function": {"name": "now"}}
    request, _ = prepared(named, grammar)
    spec = request.sampling.extra[CONSTRAINT].spec
    assert spec == tool_call_spec(Parser.call_format, [tool("now")])


def test_parallel_tool_calls_allows_several_forced_calls():
    request, _ = prepared("required", FakeGrammar(), parallel=True)
    assert request.sampling.extra[CONSTRAINT].spec.tool_calls.parallel


@pytest.mark.parametrize("tool_choice", [None, "auto", "none"])
def test_auto_and_none_stay_unconstrained(tool_choice):
    grammar = FakeGrammar()
    request, _ = prepared(tool_choice, grammar)
    assert CONSTRAINT not in request.sampling.extra and grammar.specs == []


def test_a_forced_call_and_a_response_format_cannot_both_hold():
    with pytest.raises(InvalidArgument) as err:
        prepared("required", FakeGrammar(), response_format={"type": "json_object"})
    assert err.value.argument == "response_format"


# -- max_log_len -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_log_len", [None, 5])
def test_info_logs_show_the_prompt_cut_to_max_log_len(caplog, max_log_len):
    prompt = "abcdefghijklmnopqrstuvwxyz"
    logger = logging.getLogger("lmdeploy.application.generation")
    logger.addHandler(caplog.handler)  # 'lmdeploy' may not propagate once logging is set up
    try:
        with caplog.at_level(logging.INFO, logger="lmdeploy.application.generation"):
            service(max_log_len=max_log_len).prepare(prompt, do_preprocess=False)
    finally:
        logger.removeHandler(caplog.handler)
    [line] = {r.getMessage() for r in caplog.records if "prompt=" in r.getMessage()}
    shown = prompt if max_log_len is None else prompt[:max_log_len]
    ids = list(range(26)) if max_log_len is None else list(range(max_log_len))
    assert f"prompt={shown!r}" in line and f"prompt_token_ids={ids}" in line
    assert "input_tokens=26" in line


def test_max_log_len_reaches_the_generation_service_and_must_not_be_negative():
    from lmdeploy import pipeline
    from lmdeploy.infrastructure.factory import build_container

    container = build_container(None, max_log_len=7)
    assert container.config.max_log_len() == 7
    with pytest.raises(InvalidArgument, match="max_log_len"):
        pipeline(None, max_log_len=-1)
