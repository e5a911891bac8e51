"""`lmdeploy.serve()` starts the server in a subprocess and hands back an APIClient."""

import lmdeploy
from lmdeploy import PytorchEngineConfig

from .server import free_port


def test_serve_returns_a_working_client_and_the_process_ends():
    port = free_port()
    client = lmdeploy.serve(
        None,
        "smol",
        backend="pytorch",
        server_name="127.0.0.1",
        server_port=port,
        backend_config=PytorchEngineConfig(session_len=1024),
    )
    try:
        assert client.available_models == ["smol"]
        reply = client.chat("hi", session_id=1, request_output_len=4, ignore_eos=True)
        text, tokens, finish = next(reply)  # sampled: without ignore_eos it may stop earlier
        assert tokens == 4 and finish == "length"
        other = lmdeploy.client(f"http://127.0.0.1:{port}")
        assert other.available_models == ["smol"]
    finally:
        client.process.terminate()
        assert client.process.wait(timeout=30) is not None
