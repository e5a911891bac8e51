"""Steps of api_client.feature, against a real server process."""

from pytest_bdd import given, parsers, scenarios, then, when

from lmdeploy.serve.openai.api_client import APIClient

scenarios("api_client.feature")

FEW = 16  # new tokens a request, to keep the scenarios fast
MESSAGES = [
    "hi, what's your name?",
    "who developed you?",
    "Tell me more about your developers",
    "Summarize the information we've talked so far",
]


@given("an APIClient of an api_server on the default model", target_fixture="api_client")
def api_client(feature_server):
    return APIClient(feature_server.url)


@when(
    parsers.parse('I call chat_completions_v1 with the first available model and "{content}"'),
    target_fixture="items",
)
def chat_completions(api_client, content):
    model_name = api_client.available_models[0]
    messages = [{"role": "user", "content": content}]
    return list(api_client.chat_completions_v1(model=model_name, messages=messages, max_tokens=FEW))


@then("each item is a chat completion with an assistant message")
def chat_items(items):
    assert len(items) == 1
    message = items[0]["choices"][0]["message"]
    assert items[0]["object"] == "chat.completion"
    assert message["role"] == "assistant" and message["content"]


@when(
    parsers.parse('I call completions_v1 with the first available model and the prompt "{prompt}"'),
    target_fixture="items",
)
def completions(api_client, prompt):
    model_name = api_client.available_models[0]
    return list(api_client.completions_v1(model=model_name, prompt=prompt, max_tokens=FEW))


@then("each item is a text completion with text")
def completion_items(items):
    assert len(items) == 1
    assert items[0]["object"] == "text_completion" and items[0]["choices"][0]["text"]


@when(
    "I send the documented four messages in session 1 with interactive_mode on",
    target_fixture="rounds",
)
def interactive(api_client):
    rounds = []
    for message in MESSAGES:
        for item in api_client.chat_interactive_v1(
            prompt=message,
            session_id=1,
            interactive_mode=True,
            stream=False,
            request_output_len=FEW,
        ):
            rounds.append(item)
    api_client.end_session(1)
    return rounds


@then("every round answers and the history grows round by round")
def history_grows(rounds):
    assert len(rounds) == 4 and all(r["text"] for r in rounds)
    history = [r["history_tokens"] for r in rounds]
    assert history[0] == 0  # tokens before this round, as 0.6.5 counts
    for i in range(3):  # each round's reply (at least) joins the history
        assert history[i + 1] >= history[i] + rounds[i]["tokens"] > history[i]
