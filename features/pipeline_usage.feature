Feature: The pipeline usage examples of the documentation
  A user follows the "Offline Inference Pipeline" and "Customized chat template" pages
  on the embedded default model, with few new tokens.

  Background:
    Given a pipeline on the default model

  Scenario: Set sampling parameters and apply OpenAI format prompts
    When I run the OpenAI format prompts "Hi, pls intro yourself" and "Shanghai is" with top_p 0.8, top_k 40 and temperature 0.8
    Then every reply has text and at most 16 new tokens

  Scenario: Apply streaming output
    When I stream the OpenAI format prompts "Hi, pls intro yourself" and "Shanghai is" greedily
    Then the deltas of each session join into its non-streamed reply

  Scenario: Get logits for generated tokens
    When I run "Hi, pls intro yourself" and "Shanghai is" with output_logits "generation"
    Then every reply has one row of logits over the vocabulary per generated token

  Scenario: Get last layer's hidden states for generated tokens
    When I run "Hi, pls intro yourself" and "Shanghai is" with output_last_hidden_state "generation"
    Then every reply has one hidden state per generated token

  Scenario: Calculate ppl
    When I compute the ppl of the chat template's ids of "Hello, how are you?"
    Then I get one positive cross entropy loss

  Scenario: A customized chat template from a JSON file
    Given the documented chat template JSON file
    When I load it with ChatTemplateConfig.from_json
    Then the template renders "who are you?" as the documented layout
    And a pipeline with it streams a reply

  Scenario: A chat template class registered in MODELS
    Given the documented CustomizedModel class registered as "customized_model"
    Then the template renders "who are you?" as the documented layout
    And a pipeline with ChatTemplateConfig "customized_model" streams a reply
