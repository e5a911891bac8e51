Feature: The lmdeploy command line tools
  The "Inference with Command line Interface" section names `lmdeploy check_env`, which
  gathers the environment to attach to an issue report.

  Scenario: Check the environment
    When I run "lmdeploy check_env"
    Then it prints the platform, Python, PyTorch, CUDA availability and the LMDeploy version
