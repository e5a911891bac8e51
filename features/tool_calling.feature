Feature: Tool calling
  A user follows the documentation's add/mul example against the api_server on the default
  model. With tool_choice 'required' (or a named function) the reply is always a tool call
  whose arguments follow the tool's schema, even from a 135M model.

  Background:
    Given an api_server on the default model
    And the documented add and mul tools

  Scenario: The documented two rounds, with a call required
    When I send "Compute (3+5)*2" with tool_choice "required"
    Then the reply calls a tool with arguments that follow its schema
    When I run the call and send its result back with tool_choice "required"
    Then the reply calls a tool with arguments that follow its schema

  Scenario: A named function, streamed
    When I stream "Compute (3+5)*2" with the function "mul" chosen
    Then the streamed reply calls "mul" with arguments that follow its schema
