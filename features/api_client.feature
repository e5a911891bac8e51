Feature: The documentation's APIClient examples
  A user talks to `lmdeploy serve api_server` through lmdeploy's own APIClient,
  as the "Integrate with lmdeploy APIClient" section shows.

  Background:
    Given an APIClient of an api_server on the default model

  Scenario: /v1/chat/completions through chat_completions_v1
    When I call chat_completions_v1 with the first available model and "Say this is a test!"
    Then each item is a chat completion with an assistant message

  Scenario: /v1/completions through completions_v1
    When I call completions_v1 with the first available model and the prompt "hi"
    Then each item is a text completion with text

  Scenario: A multi-round session through chat_interactive_v1
    When I send the documented four messages in session 1 with interactive_mode on
    Then every round answers and the history grows round by round
