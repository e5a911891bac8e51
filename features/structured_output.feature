Feature: Structured output with response_format
  A user constrains the reply to a JSON schema or a regular expression, as the documentation's
  'Make a self introduction' example does, through pipeline() and through the api_server.
  The documented schema bounds neither its strings nor its arrays, so a small model may run
  out of tokens before it closes the object: the reply is then a prefix the schema allows.

  Scenario: The documented JSON schema through the pipeline
    Given a pipeline on the default model
    When I ask "Make a self introduction please." with the documented json_schema
    Then the reply follows the documented schema as far as it goes

  Scenario: The documented JSON schema through the api_server with the openai client
    Given a pipeline on the default model
    And an api_server on the default model
    When I ask the openai client "Make a self-introduction please." with the documented json_schema
    Then the reply follows the documented schema as far as it goes

  Scenario: The documented regular expression
    Given a pipeline on the default model
    When I ask "What is your name?" with the regex "call me [A-Za-z]{1,10}"
    Then the reply matches the regex "call me [A-Za-z]{1,10}"

  Scenario: A response_format the engine cannot honour
    Given a pipeline on the default model
    When I ask "hi" with the regex "call me ([A-Z"
    Then I am told that response_format is invalid
