Feature: The OpenAI-compatible api_server
  A user starts `lmdeploy serve api_server` on the default model and follows the
  documentation's cURL and openai examples.

  Background:
    Given an api_server on the default model

  Scenario: List the served models with cURL
    When I GET "/v1/models"
    Then the status is 200
    And the model list contains "SmolLM2-135M-Instruct"

  Scenario: Chat with cURL
    When I POST to "/v1/chat/completions" the body
      """
      {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Hello! How are you?"}], "max_tokens": 32}
      """
    Then the status is 200
    And the answer has an assistant message and usage

  Scenario: Text completion with cURL
    When I POST to "/v1/completions" the body
      """
      {"model": "SmolLM2-135M-Instruct", "prompt": "two steps to build a house:", "max_tokens": 16}
      """
    Then the status is 200
    And the answer has completion text

  Scenario: Interactive chat with cURL keeps the session
    When I POST to "/v1/chat/interactive" the body
      """
      {"prompt": "Hello! How are you?", "session_id": 1, "interactive_mode": true, "request_output_len": 16}
      """
    Then the status is 200
    And the interactive answer reports no history on its first round

  Scenario: The openai package, sync and async
    When I ask with the openai client for "provide three suggestions about time management"
    Then the openai response has text
    When I ask with the async openai client for "provide three suggestions about time management"
    Then the openai response has text
