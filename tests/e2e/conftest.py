import pytest

from .server import api_server

API_KEY = "sk-test-key"


@pytest.fixture(scope="session")
def server():
    with api_server("--session-len", "2048", "--max-batch-size", "64", api_key=API_KEY) as running:
        yield running


@pytest.fixture
def openai_client(server):
    from openai import OpenAI

    return OpenAI(api_key=API_KEY, base_url=f"{server.url}/v1")
