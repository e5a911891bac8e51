"""Steps of pipeline_usage.feature: the documentation's pipeline examples, few tokens each."""

import json
from collections import defaultdict

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from lmdeploy import ChatTemplateConfig, GenerationConfig, PytorchEngineConfig, pipeline

scenarios("pipeline_usage.feature")

MAX_NEW = 16
DOCUMENTED_TEMPLATE = {
    "model_name": "your awesome chat template name",
    "system": "<|im_start|>system\n",
    "meta_instruction": "You are a robot developed by LMDeploy.",
    "eosys": "<|im_end|>\n",
    "user": "<|im_start|>user\n",
    "eoh": "<|im_end|>\n",
    "assistant": "<|im_start|>assistant\n",
    "eoa": "<|im_end|>",
    "separator": "\n",
    "capability": "chat",
    "stop_words": ["<|im_end|>"],
}
# {system}{meta_instruction}{eosys}{user}{user_content}{eoh}{assistant}, as the page lays it out
LAYOUT = (
    "<|im_start|>system\nYou are a robot developed by LMDeploy.<|im_end|>\n"
    "<|im_start|>user\nwho are you?<|im_end|>\n<|im_start|>assistant\n"
)


def openai_prompts(first: str, second: str) -> list[list[dict]]:
    return [[{"role": "user", "content": first}], [{"role": "user", "content": second}]]


@pytest.fixture
def context() -> dict:
    return {}


@given("a pipeline on the default model", target_fixture="pipe")
def a_pipeline(feature_pipe):
    return feature_pipe


@when(
    parsers.parse(
        'I run the OpenAI format prompts "{first}" and "{second}" with top_p {top_p:g}, '
        "top_k {top_k:d} and temperature {temperature:g}"
    ),
    target_fixture="replies",
)
def run_sampled(pipe, first, second, top_p, top_k, temperature):
    config = GenerationConfig(
        top_p=top_p, top_k=top_k, temperature=temperature, max_new_tokens=MAX_NEW
    )
    return pipe(openai_prompts(first, second), gen_config=config)


@then(parsers.parse("every reply has text and at most {count:d} new tokens"))
def replies_have_text(replies, count):
    assert len(replies) == 2
    assert all(r.text and 0 < r.generate_token_len <= count for r in replies)


@when(
    parsers.parse('I stream the OpenAI format prompts "{first}" and "{second}" greedily'),
    target_fixture="streamed",
)
def stream(pipe, first, second):
    prompts, config = openai_prompts(first, second), GenerationConfig(max_new_tokens=MAX_NEW)
    pieces: dict[int, list[str]] = defaultdict(list)
    finished = {}
    for item in pipe.stream_infer(prompts, gen_config=config):
        pieces[item.session_id].append(item.text)
        if item.finish_reason is not None:
            finished[item.session_id] = item.finish_reason
    whole = pipe(prompts, gen_config=config)
    return pieces, finished, whole


@then("the deltas of each session join into its non-streamed reply")
def deltas_join(streamed):
    pieces, finished, whole = streamed
    assert sorted(pieces) == [0, 1] and sorted(finished) == [0, 1]
    assert ["".join(pieces[i]) for i in (0, 1)] == [r.text for r in whole]
    assert all(len(pieces[i]) > 1 for i in (0, 1))  # it did stream


@when(
    parsers.parse('I run "{first}" and "{second}" with {option} "{value}"'),
    target_fixture="replies",
)
def run_with_output(pipe, first, second, option, value):
    config = GenerationConfig(max_new_tokens=10, **{option: value})
    return pipe([first, second], gen_config=config)


@then("every reply has one row of logits over the vocabulary per generated token")
def logits_rows(pipe, replies):
    vocab = pipe.service.tokenizer.vocab_size
    for r in replies:
        assert tuple(r.logits.shape) == (r.generate_token_len, vocab)


@then("every reply has one hidden state per generated token")
def hidden_rows(replies):
    for r in replies:
        rows, width = r.last_hidden_state.shape
        assert rows == r.generate_token_len and width == 576  # SmolLM2-135M's hidden size


@when(
    parsers.parse('I compute the ppl of the chat template\'s ids of "{content}"'),
    target_fixture="ppl",
)
def compute_ppl(pipe, content):
    from lmdeploy import Tokenizer

    # The page uses transformers' AutoTokenizer; the default model's is lmdeploy's `.model.model`.
    tokenizer = Tokenizer("SmolLM2-135M-Instruct").model.model
    input_ids = tokenizer.apply_chat_template([{"role": "user", "content": content}])
    return pipe.get_ppl(input_ids)


@then("I get one positive cross entropy loss")
def one_loss(ppl):
    assert isinstance(ppl, list) and len(ppl) == 1 and 0 < ppl[0] < 20


@given("the documented chat template JSON file", target_fixture="json_file")
def template_file(tmp_path):
    path = tmp_path / "template.json"
    path.write_text(json.dumps(DOCUMENTED_TEMPLATE))
    return path


@when("I load it with ChatTemplateConfig.from_json", target_fixture="template_config")
def from_json(json_file):
    return ChatTemplateConfig.from_json(str(json_file))


@given(
    parsers.parse('the documented CustomizedModel class registered as "{name}"'),
    target_fixture="template_config",
)
def register(name):
    from lmdeploy.model import MODELS, BaseChatTemplate

    if name not in MODELS.module_dict:

        @MODELS.register_module(name=name)
        class CustomizedModel(BaseChatTemplate):
            """A customized chat template."""

            def __init__(
                self,
                system="<|im_start|>system\n",
                meta_instruction="You are a robot developed by LMDeploy.",
                user="<|im_start|>user\n",
                assistant="<|im_start|>assistant\n",
                eosys="<|im_end|>\n",
                eoh="<|im_end|>\n",
                eoa="<|im_end|>",
                separator="\n",
                stop_words=["<|im_end|>", "<|action_end|>"],  # noqa: B006 - as documented
            ):
                super().__init__(
                    system=system,
                    meta_instruction=meta_instruction,
                    eosys=eosys,
                    user=user,
                    eoh=eoh,
                    assistant=assistant,
                    eoa=eoa,
                    separator=separator,
                    stop_words=stop_words,
                )

    return ChatTemplateConfig(name)


@then(parsers.parse('the template renders "{content}" as the documented layout'))
def renders(template_config, content):
    template = template_config.chat_template
    assert template.messages2prompt([{"role": "user", "content": content}]) == LAYOUT


@then("a pipeline with it streams a reply")
@then(parsers.parse('a pipeline with ChatTemplateConfig "{name}" streams a reply'))
def streams_a_reply(template_config):
    pipe = pipeline(
        "SmolLM2-135M-Instruct",
        backend_config=PytorchEngineConfig(session_len=1024),
        chat_template_config=template_config,
    )
    try:
        messages = [{"role": "user", "content": "who are you?"}]
        config = GenerationConfig(max_new_tokens=MAX_NEW)
        text = "".join(r.text for r in pipe.stream_infer(messages, gen_config=config))
        whole = pipe(messages, gen_config=config)
    finally:
        pipe.close()
    assert text and text == whole.text
    # The system turn of the template is in the prompt: more tokens than the question alone.
    assert whole.input_token_len > 20
