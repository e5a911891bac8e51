"""Steps of pipeline.feature."""

from pytest_bdd import given, parsers, scenarios, then, when

from lmdeploy import GenerationConfig

scenarios("pipeline.feature")


@given(parsers.parse('a pipeline on the default model "{name}"'), target_fixture="pipe")
def a_pipeline(feature_pipe, name):
    assert feature_pipe.model_name == name
    return feature_pipe


@when(parsers.parse('I run the prompts "{first}" and "{second}"'), target_fixture="responses")
def run_prompts(pipe, first, second):
    return pipe([first, second], gen_config=GenerationConfig(max_new_tokens=32))


@then(parsers.parse("I get {count:d} responses in prompt order"))
def responses_in_order(responses, count):
    assert len(responses) == count
    assert [r.index for r in responses] == list(range(count))


@then("every response has generated text, token counts and a finish reason")
def responses_complete(responses):
    for r in responses:
        assert r.text.strip()
        assert r.input_token_len > 0 and 0 < r.generate_token_len <= 32
        assert r.generate_token_len == len(r.token_ids)
        assert r.finish_reason in ("stop", "length")


@when(parsers.parse('I run the prompt "{prompt}" twice with top_k 1'), target_fixture="runs")
def run_twice(pipe, prompt):
    config = GenerationConfig(max_new_tokens=24, top_k=1, do_sample=True)
    return [pipe(prompt, gen_config=config) for _ in range(2)]


@then("both runs give the same text")
def same_text(runs):
    assert runs[0].text == runs[1].text and runs[0].text


@when(parsers.parse('I send the messages of a user asking "{question}"'), target_fixture="response")
def send_messages(pipe, question):
    return pipe(
        [{"role": "user", "content": question}], gen_config=GenerationConfig(max_new_tokens=40)
    )


@then(parsers.parse('the response mentions "{word}"'))
def mentions(response, word):
    assert word in response.text
