import pytest


@pytest.fixture(scope="session")
def feature_pipe():
    from lmdeploy import PytorchEngineConfig, pipeline

    pipe = pipeline("SmolLM2-135M-Instruct", backend_config=PytorchEngineConfig(session_len=2048))
    yield pipe
    pipe.close()
