"""response_format on the default model: every constrained output parses and validates, and free
requests in the same batch generate what they would alone."""

import json
import random
import re
import time

import jsonschema
import pytest

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.domain.errors import InvalidArgument

MAX_NEW_TOKENS = 128
KEYS = ["name", "age", "city", "tags", "score", "ok", "kind", "size", "color", "level", "id"]
WORDS = ["red", "green", "blue", "small", "large", "cat", "dog", "alpha", "beta", "gamma"]


def leaf(rng: random.Random) -> tuple[dict, int]:
    """A scalar schema and the most characters (so tokens) its JSON value can take."""
    kind = rng.choice(["pattern", "short", "integer", "number", "boolean", "enum"])
    if kind == "pattern":
        n = rng.randint(3, 10)
        return {"type": "string", "pattern": f"[a-z ]{{1,{n}}}"}, n + 2
    if kind == "short":  # any characters: a JSON escape (\uXXXX) is six of them
        n = rng.randint(1, 3)
        return {"type": "string", "minLength": 1, "maxLength": n}, 6 * n + 2
    if kind == "integer":
        low = rng.randint(-100, 50)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(1, 2000)}, 5
    if kind == "number":  # xgrammar bounds the fraction of a ranged number to 6 digits
        return {"type": "number", "minimum": 0, "maximum": rng.choice([1, 10, 100])}, 11
    if kind == "boolean":
        return {"type": "boolean"}, 5
    values = rng.sample(WORDS, rng.randint(2, 4))
    return {"type": "string", "enum": values}, max(map(len, values)) + 2


def value(rng: random.Random, depth: int) -> tuple[dict, int]:
    roll = rng.random()
    if roll < 0.2:
        item, size = leaf(rng)
        k = rng.randint(1, 3)
        return {"type": "array", "items": item, "minItems": 1, "maxItems": k}, 2 + k * (size + 2)
    if roll < 0.35 and depth < 2:
        return obj(rng, depth + 1, rng.randint(1, 2))
    return leaf(rng)


def obj(rng: random.Random, depth: int, num_props: int) -> tuple[dict, int]:
    keys = rng.sample(KEYS, num_props)
    props, size = {}, 2
    for key in keys:
        props[key], n = value(rng, depth)
        size += len(key) + 4 + n + 2  # "key": value,
    required = [k for k in keys if rng.random() < 0.7] or keys[:1]
    return {"type": "object", "properties": props, "required": required}, size


def schemas(count: int, seed: int = 2024) -> list[dict]:
    """Varied schemas whose longest output fits MAX_NEW_TOKENS with room for the stop token
    (a token is at least one character, so characters bound tokens)."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        schema, worst = obj(rng, 0, rng.randint(1, 4))
        if worst < MAX_NEW_TOKENS:
            out.append(schema)
    return out


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "test", "schema": schema}}


def prompt_for(schema: dict) -> str:
    return f"Reply with a JSON object with the keys {', '.join(schema['properties'])}."


def test_100_json_schema_generations_in_one_batch_all_validate(default_pipe):
    cases = schemas(100)
    kinds = json.dumps(cases)
    assert all(k in kinds for k in ['"enum"', '"array"', '"boolean"', '"number"', '"pattern"'])
    configs = [
        GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, response_format=json_format(s))
        for s in cases
    ]
    start = time.perf_counter()
    outs = default_pipe([prompt_for(s) for s in cases], gen_config=configs)
    elapsed = time.perf_counter() - start
    print(f"\n100 json_schema generations: {elapsed:.1f} s")
    for schema, out in zip(cases, outs, strict=True):
        assert out.finish_reason == "stop", (schema, out.text)
        jsonschema.validate(json.loads(out.text), schema)


def test_json_object_outputs_are_objects(default_pipe):
    prompts = ["Describe a cat as JSON.", "Give me a JSON object about Paris."]
    config = GenerationConfig(max_new_tokens=64, response_format={"type": "json_object"})
    for out in default_pipe(prompts, gen_config=config):
        if out.finish_reason == "stop":
            assert isinstance(json.loads(out.text), dict)
        else:  # a free object may run long: what there is must still open an object
            assert out.finish_reason == "length" and out.text.startswith("{")


def test_each_of_n_sampled_choices_keeps_its_own_grammar_state(default_pipe):
    """n choices of one request decode side by side, each with a constraint of its own (one
    shared constraint took every choice's tokens and lost them all)."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    format_ = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    config = GenerationConfig(
        n=3, max_new_tokens=80, do_sample=True, temperature=1.0, random_seed=1,
        response_format=format_,
    )  # fmt: skip
    service = default_pipe.service
    streams = service.submit_choices(service.prepare("Give me a person as JSON.", config))
    texts = ["".join(out.text for out in stream) for stream in streams]
    assert len(texts) == 3
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    "pattern",
    [
        "call me [A-Za-z]{1,10}",
        r"\d{3}-\d{4}",
        "(yes|no|maybe)",
        r"[A-Z][a-z]{2,8} is [0-9]{1,2} years old\.",
    ],
)
def test_regex_outputs_match_their_pattern(default_pipe, pattern):
    config = GenerationConfig(
        max_new_tokens=48, response_format={"type": "regex_schema", "regex_schema": pattern}
    )
    for out in default_pipe(["What is your name?", "Tell me something."], gen_config=config):
        assert out.finish_reason == "stop" and re.fullmatch(pattern, out.text), out.text


def test_a_mixed_batch_keeps_each_requests_behaviour(default_pipe):
    free_prompts = ["Hello, how are you?", "Write a haiku about rain.", "What is 2+2?"]
    free = GenerationConfig(max_new_tokens=40)
    alone = [default_pipe(p, gen_config=free).text for p in free_prompts]
    cases = schemas(5, seed=7)
    prompts, configs = [], []
    for i, p in enumerate(free_prompts):
        prompts += [p, prompt_for(cases[i])]
        configs += [
            free,
            GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, response_format=json_format(cases[i])),
        ]
    outs = default_pipe(prompts, gen_config=configs)
    assert [o.text for o in outs[0::2]] == alone
    for schema, out in zip(cases, outs[1::2], strict=False):
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), schema)


def test_preempted_and_chunked_requests_keep_their_grammar(default_pipe, monkeypatch):
    """Prompts of ~150 tokens prefilled in 64-token chunks, over a cache too small for the
    batch, admitted with no headroom for the running sequences' growth: sequences are
    preempted and recomputed mid-output, and still follow the grammar and generate what they
    do in a roomy cache."""
    monkeypatch.setenv("LMDEPLOY_ADMISSION_HEADROOM", "0")
    cases = schemas(12, seed=11)
    filler = "Think of a person, a town and some colours, then answer in JSON. " * 10
    prompts = [filler + prompt_for(s) for s in cases]
    configs = [
        GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, response_format=json_format(s))
        for s in cases
    ]
    roomy = default_pipe(prompts, gen_config=configs)
    config = PytorchEngineConfig(
        block_size=16, num_gpu_blocks=40, max_prefill_token_num=64, session_len=1024
    )
    tight = pipeline(None, backend_config=config)
    try:
        outs = tight(prompts, gen_config=configs)
        stats = tight.service.engine.stats()
    finally:
        tight.close()
    assert stats.num_preemptions > 0, "the cache was meant to run short"
    for schema, out, reference in zip(cases, outs, roomy, strict=True):
        assert out.finish_reason == "stop"
        jsonschema.validate(json.loads(out.text), schema)
        assert out.text == reference.text


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "regex_schema", "regex_schema": "call me ([A-Z"},
        json_format({"type": "frob"}),
        json_format({"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}),
    ],
)
def test_a_grammar_that_cannot_compile_fails_before_anything_runs(default_pipe, response_format):
    config = GenerationConfig(response_format=response_format)
    with pytest.raises(InvalidArgument) as err:
        default_pipe(["hello", "world"], gen_config=[GenerationConfig(), config])
    assert err.value.argument == "response_format"
    stats = default_pipe.service.engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
