Feature: Offline inference with pipeline()
  A user loads the embedded default model and generates text, as the documentation's
  'Hello, world' example does.

  Scenario: The documented 'Hello, world' example
    Given a pipeline on the default model "SmolLM2-135M-Instruct"
    When I run the prompts "Hi, pls intro yourself" and "Shanghai is"
    Then I get 2 responses in prompt order
    And every response has generated text, token counts and a finish reason

  Scenario: Greedy decoding is repeatable
    Given a pipeline on the default model "SmolLM2-135M-Instruct"
    When I run the prompt "Name three colors." twice with top_k 1
    Then both runs give the same text

  Scenario: An OpenAI-style message list
    Given a pipeline on the default model "SmolLM2-135M-Instruct"
    When I send the messages of a user asking "What is the capital of France?"
    Then the response mentions "Paris"
