"""Steps of structured_output.feature."""

import json
import re

import jsonschema
from pytest_bdd import given, parsers, scenarios, then, when

from lmdeploy import GenerationConfig
from lmdeploy.application.ports import GrammarSpec
from lmdeploy.domain.errors import InvalidArgument

scenarios("structured_output.feature")

# The documentation's schema (its api_server version), word for word.
GUIDE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "skills": {"type": "array", "items": {"type": "string", "maxLength": 10}, "minItems": 3},
        "work history": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"company": {"type": "string"}, "duration": {"type": "string"}},
            },
            "required": ["company"],
        },
    },
    "required": ["name", "skills", "work history"],
}
RESPONSE_FORMAT = dict(type="json_schema", json_schema=dict(name="test", schema=GUIDE))
# The documentation samples (temperature 0.8, top_p 0.8); a seed makes the run repeatable and
# a token bound keeps a runaway reply from taking the suite's time (about half of the seeds
# close the object within 256 tokens on the 135M model).
SAMPLING = dict(temperature=0.8, top_p=0.8)
SEED, MAX_TOKENS = 1, 128


@given("a pipeline on the default model", target_fixture="pipe")
def a_pipeline(feature_pipe):
    return feature_pipe


@given("an api_server on the default model", target_fixture="server")
def a_server(feature_server):
    return feature_server


@when(parsers.parse('I ask "{prompt}" with the documented json_schema'), target_fixture="reply")
def ask_pipeline_json(pipe, prompt):
    config = GenerationConfig(
        response_format=RESPONSE_FORMAT,
        do_sample=True,
        random_seed=SEED,
        max_new_tokens=MAX_TOKENS,
        **SAMPLING,
    )
    response = pipe([prompt], gen_config=config)[0]
    return response.text, response.finish_reason


@when(
    parsers.parse('I ask the openai client "{prompt}" with the documented json_schema'),
    target_fixture="reply",
)
def ask_server_json(server, prompt):
    from openai import OpenAI

    client = OpenAI(api_key="YOUR_API_KEY", base_url=f"{server.url}/v1")
    model_name = client.models.list().data[0].id
    response = client.chat.completions.create(
        model=model_name,
        messages=[{"role": "user", "content": prompt}],
        response_format=RESPONSE_FORMAT,
        seed=SEED,
        max_tokens=MAX_TOKENS,
        **SAMPLING,
    )
    choice = response.choices[0]
    return choice.message.content, choice.finish_reason


@then("the reply follows the documented schema as far as it goes")
def follows_schema(pipe, reply):
    import xgrammar as xgr

    text, finish = reply
    if finish == "stop":
        jsonschema.validate(json.loads(text), GUIDE)
        return
    assert finish == "length", finish
    # Cut short: the text, re-read as characters by a fresh matcher, is a prefix of the schema.
    compiled = pipe.service.grammar.compile(GrammarSpec("json_schema", json.dumps(GUIDE)))
    assert xgr.GrammarMatcher(compiled).accept_string(text), text


@when(parsers.parse('I ask "{prompt}" with the regex "{regex}"'), target_fixture="reply")
def ask_regex(pipe, prompt, regex):
    config = GenerationConfig(
        response_format={"type": "regex_schema", "regex_schema": regex}, max_new_tokens=32
    )
    try:
        response = pipe(prompt, gen_config=config)
    except InvalidArgument as exc:
        return exc
    return response.text, response.finish_reason


@then(parsers.parse('the reply matches the regex "{regex}"'))
def matches(reply, regex):
    text, finish = reply
    assert finish == "stop" and re.fullmatch(regex, text), text


@then("I am told that response_format is invalid")
def told_invalid(reply):
    assert isinstance(reply, InvalidArgument) and reply.argument == "response_format"
    assert "cannot compile" in str(reply)
