"""Start a real `lmdeploy serve api_server` process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    api_key: str | None
    process: subprocess.Popen

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stats(self) -> dict[str, int]:
        return httpx.get(f"{self.url}/stats", headers=self.headers, timeout=10).json()

    def wait_idle(self, timeout: float = 30.0) -> dict[str, int]:
        """Stats once nothing runs or waits and every block is back (or the last reading)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            idle = stats["num_running"] == 0 and stats["num_waiting"] == 0
            if (
                idle and stats["num_free_blocks"] == stats["num_blocks"]
            ) or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)


def _command(kind: str, port: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lmdeploy.infrastructure.entrypoint",
        "serve",
        kind,
        "--server-name",
        "127.0.0.1",
        "--server-port",
        str(port),
        *args,
    ]


def _wait_ready(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.process.poll() is None, (
            f"{server.url} exited with {server.process.returncode}"
        )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        assert time.monotonic() < deadline, f"{server.url} did not start in time"
        time.sleep(0.5)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.contextmanager
def servers(
    kind: str, argv: list[list[str]], api_key: str | None = None, startup_timeout: float = 180.0
) -> Iterator[list[RunningServer]]:
    """Start one `lmdeploy serve KIND` process per argument list, all at once; wait for all."""
    started = []
    try:
        for args in argv:
            port = free_port()
            command = _command(kind, port, *args) + (["--api-keys", api_key] if api_key else [])
            process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            started.append(RunningServer(f"http://127.0.0.1:{port}", api_key, process))
        for server in started:
            _wait_ready(server, startup_timeout)
        yield started
    finally:
        for server in started:
            _stop(server.process)


@contextlib.contextmanager
def api_server(
    *args: str, api_key: str | None = None, startup_timeout: float = 180.0
) -> Iterator[RunningServer]:
    with servers("api_server", [list(args)], api_key, startup_timeout) as (server,):
        yield server
