import pytest


@pytest.fixture(scope="session")
def feature_pipe():
    from lmdeploy import PytorchEngineConfig, pipeline

    pipe = pipeline("SmolLM2-135M-Instruct", backend_config=PytorchEngineConfig(session_len=2048))
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def feature_server():
    """One api_server on the default model for the structured-output and tool-calling features."""
    from tests.e2e.server import api_server

    with api_server("--session-len", "2048") as server:
        yield server
