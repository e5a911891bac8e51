"""LoRA adapters through the server and the official `openai` client: /v1/models lists the
base and each adapter, `model=<adapter>` runs it (ids equal transformers + peft's, with one
device slot for two adapters), an unknown model is a 404 model_not_found."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import LONG_TEXT
from tests.integration.lora_models import make_lora_setup, peft_greedy, peft_model

from .server import api_server

MAX_NEW = 8
SERVED = ("all8", "kou8")


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, hf_tokenizer):
    setup = make_lora_setup(tmp_path_factory.mktemp("lora-e2e"), hf_tokenizer, SERVED)
    pairs = [f"{name}={setup.adapter_dirs[name]}" for name in SERVED]
    args = ["--session-len", "256", "--max-loras", "1", "--adapters", *pairs]
    with api_server(str(setup.base_dir), *args) as running:
        yield setup, running


def test_adapters_are_listed_and_served(lora_server, hf_tokenizer):
    setup, running = lora_server
    client = openai.OpenAI(api_key="none", base_url=f"{running.url}/v1")
    base = str(setup.base_dir)
    assert [m.id for m in client.models.list().data] == [base, *SERVED]
    prompt = hf_tokenizer.encode(LONG_TEXT, add_special_tokens=False)[:20]
    expected = {
        name: peft_greedy(peft_model(setup, None if name == base else name), prompt, MAX_NEW)
        for name in (base, *SERVED)
    }
    for name in (*SERVED, base, *SERVED):
        reply = client.completions.create(
            model=name, prompt=prompt, max_tokens=MAX_NEW, temperature=0,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert reply.choices[0].text == hf_tokenizer.decode(expected[name]), name
        assert reply.model == name


def test_an_unknown_adapter_is_404_model_not_found(lora_server):
    _, running = lora_server
    client = openai.OpenAI(api_key="none", base_url=f"{running.url}/v1")
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-lora", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["code"] == "model_not_found"


def test_chat_completions_run_the_adapter_named(lora_server):
    setup, running = lora_server
    client = openai.OpenAI(api_key="none", base_url=f"{running.url}/v1")
    texts = {}
    for name in (str(setup.base_dir), *SERVED):
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hello"}], max_tokens=MAX_NEW,
            temperature=0, extra_body={"ignore_eos": True},
        )  # fmt: skip
        assert reply.model == name
        texts[name] = reply.choices[0].message.content
    assert len(set(texts.values())) == len(texts), texts  # each adapter changes the reply
