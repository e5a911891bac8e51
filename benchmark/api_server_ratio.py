"""The api_server against the offline pipeline on the same requests: output tok/s of N streaming
chat completions at C concurrent clients over HTTP, as a fraction of `pipe()`'s output tok/s on
the same prompts and lengths in the same run (the serving issue's row: >= 85% at 256 streams on
the H200). What the ratio charges to the server: HTTP, the chat template per request,
detokenization and SSE framing, and the event loop they share.

    python benchmark/api_server_ratio.py [--model llama-3-8b] [--num-prompts 1000] [--concurrency 256]
    python benchmark/api_server_ratio.py --device cpu --tiny --num-prompts 32 --concurrency 8  # smoke

The model is a shipped dummy shape (random weights) with the embedded default model's tokenizer
(from its GGUF, or `LMDEPLOY_VLM_TOKENIZER=DIR` where it was saved; its vocabulary sets the
embedding's rows), so both runs detokenize real text. The offline run goes first, in a
process of its own (its steps traced: where its wall time went), which exits before the server
starts: each has the whole GPU. The load comes from `--client-processes` processes (one would measure
itself); the server's CPU a streamed token is reported by thread, the main thread being its
event loop. `--switch-interval-ms 5 0.5` runs the server once per GIL switch interval (A/B);
`--engine-process 1 0` runs the server with its engine in its own process (the default) and
in the server's; `--offline-tok-s` reuses an offline figure measured earlier on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from gpu_families import tiny_config  # noqa: E402
from gpu_vlm import base_tokenizer  # noqa: E402
from profile_restful_api import make_workload, measure, print_report  # noqa: E402
from step_trace import StepTrace, breakdown  # noqa: E402

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline  # noqa: E402
from lmdeploy.adapters.engines.pytorch.distributed.workers import free_port  # noqa: E402
from lmdeploy.adapters.loaders import dummy  # noqa: E402


def write_model(name: str, directory: Path, tiny: bool) -> None:
    tokenizer = base_tokenizer()
    cfg = dummy.shipped_config(name)
    if cfg is None:
        raise SystemExit(f"{name} is not a shipped shape: one of {sorted(dummy.SHIPPED_CONFIGS)}")
    cfg = tiny_config(cfg) if tiny else cfg | {"vocab_size": len(tokenizer)}
    cfg |= {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    (directory / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(directory)


def offline(path: str, args: argparse.Namespace, workload: list[tuple[str, int]]) -> dict:
    config = PytorchEngineConfig(
        device_type=args.device,
        load_format="dummy",
        session_len=args.session_len,
        max_batch_size=args.concurrency,
    )
    with pipeline(path, backend_config=config) as pipe:
        warm = GenerationConfig(max_new_tokens=4, ignore_eos=True)
        pipe([[{"role": "user", "content": workload[0][0]}]], gen_config=warm)
        prompts = [[{"role": "user", "content": p}] for p, _ in workload]
        gens = [
            GenerationConfig(max_new_tokens=n, ignore_eos=True, do_sample=False)
            for _, n in workload
        ]
        trace = StepTrace()
        trace.install(pipe.service.engine.runner)
        start = time.perf_counter()
        outs = pipe(prompts, gen_config=gens)
        end = time.perf_counter()
    tokens = sum(o.generate_token_len for o in outs)
    return {
        "elapsed_s": end - start,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / (end - start),
        "prompt_tokens": sum(o.input_token_len for o in outs),
        "time": breakdown(trace, start, end),
    }


def serve(
    path: str,
    args: argparse.Namespace,
    switch_interval_ms: float | None = None,
    engine_process: bool = True,
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # The console script's function: the GPU image imports the checkout without installing it.
    cli = "from lmdeploy.infrastructure.entrypoint import main; main()"
    if switch_interval_ms is not None:  # overrides what the server sets for itself
        cli = cli.replace(
            "main()", f"import sys; sys.setswitchinterval({switch_interval_ms / 1e3}); main()"
        )
    command = [sys.executable, "-c", cli, "serve", "api_server", path, "--backend", "pytorch"]
    command += ["--server-port", str(port), "--device", args.device, "--load-format", "dummy"]
    command += ["--session-len", str(args.session_len), "--max-batch-size", str(args.concurrency)]
    command += ["--log-level", "WARNING"]
    env = {**os.environ, "LMDEPLOY_ENGINE_PROCESS": "1" if engine_process else "0"}
    server = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the api_server exited with {server.returncode} before it answered")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    server.kill()
    raise SystemExit(f"the api_server did not answer /health within {args.startup_timeout} s")


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds each thread of a process has used (Linux /proc): the main thread (the event
    loop) as "main", the others by thread id (torch's pool threads, the engine's thread)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = "main" if task.name == str(pid) else f"thread {task.name}"
        fields = stat[stat.rindex(")") + 2 :].split()
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def engine_process_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of the server's engine process (its spawned child) by thread, prefixed
    "engine": its main thread reads commands, another runs the engine loop."""
    used: dict[str, float] = {}
    for child in children(pid):
        with contextlib.suppress(OSError):
            if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text():
                for name, s in thread_cpu_s(child).items():
                    used[f"engine {name}"] = s
    return used


class EnginePoller:
    """What the engine holds while the load runs, from the server's /stats every `period_s`:
    sequences running and waiting (a server whose engine runs few sequences is starved by its
    front; one with many waiting is limited by the engine), and its steps over the run."""

    def __init__(self, url: str, period_s: float = 0.25) -> None:
        self._url, self._period = url, period_s
        self._samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self._period):
                with contextlib.suppress(httpx.HTTPError):
                    self._samples.append(client.get(self._url + "/stats").json())

    def __enter__(self) -> EnginePoller:
        self._first = httpx.get(self._url + "/stats", timeout=10).json()
        self._ttft = engine_ttft(self._url)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last = httpx.get(self._url + "/stats", timeout=10).json()
        self._ttft_after = engine_ttft(self._url)

    def report(self, elapsed_s: float) -> dict:
        busy = [s for s in self._samples if s["num_running"] or s["num_waiting"]] or [self._last]
        steps = self._last["num_steps"] - self._first["num_steps"]
        ttft_n = self._ttft_after[1] - self._ttft[1]
        return {
            "running_mean": sum(s["num_running"] for s in busy) / len(busy),
            "waiting_mean": sum(s["num_waiting"] for s in busy) / len(busy),
            "steps": steps,
            "ms_per_step": elapsed_s / max(steps, 1) * 1e3,
            "engine_ttft_mean_s": (self._ttft_after[0] - self._ttft[0]) / max(ttft_n, 1),
        }


def engine_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of the engine's time-to-first-token histogram (admission to first token)."""
    found = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        for key in found:
            if line.startswith(f"lmdeploy_time_to_first_token_seconds_{key} "):
                found[key] = float(line.split()[1])
    return found["sum"], found["count"]


def serve_once(
    path: str, args: argparse.Namespace, switch_interval_ms: float | None, engine_process: bool
) -> dict:
    server, url = serve(path, args, switch_interval_ms, engine_process)
    try:
        client_args = argparse.Namespace(
            url=url, api_key=None, model=None, timeout=1800, concurrency=args.concurrency,
            num_prompts=args.num_prompts, seed=args.seed, min_input=args.min_input,
            max_input=args.max_input, min_output=args.min_output, max_output=args.max_output,
            processes=args.client_processes,
        )  # fmt: skip
        measure(argparse.Namespace(**{**vars(client_args), "num_prompts": 2, "processes": 1}))
        before = {**thread_cpu_s(server.pid), **engine_process_cpu_s(server.pid)}
        with EnginePoller(url) as poller:
            report = measure(client_args)
        report["engine"] = poller.report(report["elapsed_s"])
        after = {**thread_cpu_s(server.pid), **engine_process_cpu_s(server.pid)}
        # The server's threads' CPU a streamed token: the event loop's (the main thread) is what
        # the HTTP path costs; in one process it shares the GIL with the engine thread.
        report["server_cpu_us_per_token"] = {
            name: (after[name] - before.get(name, 0.0)) / report["output_tokens"] * 1e6
            for name in sorted(after, key=lambda n: before.get(n, 0.0) - after[n])[:6]
        }
        return report
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-3-8b", help="a shipped dummy shape")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the shape shrunk to 2 layers: a smoke run")
    ap.add_argument("--num-prompts", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--min-input", type=int, default=50)
    ap.add_argument("--max-input", type=int, default=400)
    ap.add_argument("--min-output", type=int, default=50)
    ap.add_argument("--max-output", type=int, default=350)
    ap.add_argument("--session-len", type=int, default=4096)
    ap.add_argument("--startup-timeout", type=float, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--client-processes", type=int, default=4, help="load-generating processes (one saturates)"
    )
    ap.add_argument(
        "--switch-interval-ms",
        type=float,
        nargs="+",
        default=[None],
        help="run the server once per value of the server process's GIL switch interval (A/B)",
    )
    ap.add_argument(
        "--engine-process",
        type=int,
        nargs="+",
        choices=[0, 1],
        default=[1],
        help="1: the server's engine in its own process (the default); 0: in the server's (A/B)",
    )
    ap.add_argument(
        "--offline-tok-s",
        type=float,
        default=None,
        help="skip the offline run and compare with this figure (measured earlier on this machine)",
    )
    ap.add_argument("--output", default="benchmark/results/api_server_ratio.json")
    args = ap.parse_args()
    lengths = (args.min_input, args.max_input, args.min_output, args.max_output)
    workload = make_workload(args.num_prompts, args.seed, *lengths)
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        write_model(args.model, Path(tmp), args.tiny)
        if args.offline_tok_s is None:
            # In a process of its own: this process would keep the offline engine's memory
            # reserved (torch's caching allocator) and the server's KV cache, sized from the
            # free memory, would shrink (session 15 measured 0.49 that way; 1.13 without).
            with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
                ours = pool.submit(offline, tmp, args, workload).result()
        else:
            ours = {"output_tokens_per_s": args.offline_tok_s, "given": True}
        print(f"offline pipeline     {ours['output_tokens_per_s']:8.1f} tok/s", flush=True)
        for engine_process, interval in itertools.product(
            args.engine_process, args.switch_interval_ms
        ):
            served = serve_once(tmp, args, interval, bool(engine_process))
            where = "its own process" if engine_process else "the server's process"
            print(f"-- engine in {where}; switch interval {interval} ms (None: Python's)")
            print_report(served)
            print("engine while loaded:", {k: round(v, 2) for k, v in served["engine"].items()})
            print(
                "server CPU us a token:",
                {k: round(v, 1) for k, v in served["server_cpu_us_per_token"].items()},
            )
            ratio = served["output_tokens_per_s"] / ours["output_tokens_per_s"]
            print(f"api_server / offline {ratio:8.3f} (target >= 0.85 at 256 streams on the H200)")
            servers.append(
                {
                    "engine_process": bool(engine_process),
                    "switch_interval_ms": interval,
                    **served,
                    "ratio": ratio,
                }
            )
    result = {
        "args": vars(args),
        "offline": ours,
        "api_server": servers[0],
        "ratio": servers[0]["ratio"],
    }
    if len(servers) > 1:
        result["api_servers"] = servers
    if os.path.dirname(args.output):
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
