"""Load-test a running api_server with N concurrent streaming clients.

Prompts and output lengths come from a seeded synthetic distribution; each client streams its
chat completion with ignore_eos, so the output length is exactly what was drawn. Prints request
throughput, output tokens/s, time to first token (TTFT) and inter-token latency (ITL)
percentiles, and writes the figures as JSON. The streams are spread over `--processes` client
processes: one Python process parsing the events of a few hundred streams saturates its core
and would measure itself (its busiest process's CPU share is reported).

    lmdeploy serve api_server --server-port 23333 &
    python benchmark/profile_restful_api.py http://127.0.0.1:23333 --num-prompts 64 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

WORDS = (
    "time memory river engine garden signal market lesson planet window story number "
    "music water letter forest system market city light"
).split()


@dataclass
class RequestResult:
    ok: bool
    prompt_words: int
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itls: list[float] = field(default_factory=list)
    error: str = ""


def make_workload(
    n: int, seed: int, min_in: int, max_in: int, min_out: int, max_out: int
) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        (" ".join(rng.choices(WORDS, k=rng.randint(min_in, max_in))), rng.randint(min_out, max_out))
        for _ in range(n)
    ]


async def one_request(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    result = RequestResult(ok=False, prompt_words=len(prompt.split()))
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                result.error = (await response.aread()).decode()[:200]
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk["choices"] or not chunk["choices"][0]["delta"].get("content"):
                    continue
                now = time.perf_counter()
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
        result.latency = time.perf_counter() - start
        result.ok = True
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    return result


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "mean": 0.0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "p50": pick(0.5),
        "p90": pick(0.9),
        "p99": pick(0.99),
        "mean": statistics.fmean(ordered),
    }


async def _shard(
    args: argparse.Namespace, workload: list[tuple[str, int]], concurrency: int, barrier=None
) -> tuple[list[RequestResult], float, float, float, str]:
    """One client process's share: its requests, at most `concurrency` in flight, started once
    every process is ready (`barrier`): a process still importing would otherwise leave the
    others running at a fraction of the concurrency."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        gate = asyncio.Semaphore(concurrency)

        async def limited(prompt: str, n: int) -> RequestResult:
            async with gate:
                return await one_request(client, model, prompt, n)

        if barrier is not None:
            await asyncio.to_thread(barrier.wait)
        start, cpu_start = time.monotonic(), time.process_time()
        results = await asyncio.gather(*(limited(p, n) for p, n in workload))
        end, cpu = time.monotonic(), time.process_time() - cpu_start
    return results, start, end, cpu, model


def _run_shard(args: argparse.Namespace, workload, concurrency: int, barrier=None):
    return asyncio.run(_shard(args, workload, concurrency, barrier))


def measure(args: argparse.Namespace) -> dict:
    """The whole workload at `args.concurrency` streams, spread over `args.processes` client
    processes (requests dealt round-robin): one Python process parsing every event of 256
    streams runs near a full core and would measure itself, not the server."""
    workload = make_workload(
        args.num_prompts,
        args.seed,
        args.min_input,
        args.max_input,
        args.min_output,
        args.max_output,
    )
    processes = max(1, min(args.processes, args.concurrency, len(workload)))
    shares = [
        args.concurrency // processes + (i < args.concurrency % processes) for i in range(processes)
    ]
    if processes == 1:
        parts = [_run_shard(args, workload, args.concurrency)]
    else:
        context = mp.get_context("spawn")
        with context.Manager() as manager, ProcessPoolExecutor(processes, context) as pool:
            barrier = manager.Barrier(processes)
            futures = [
                pool.submit(_run_shard, args, workload[i::processes], shares[i], barrier)
                for i in range(processes)
            ]
            parts = [f.result() for f in futures]
    results = [r for part in parts for r in part[0]]
    elapsed = max(p[2] for p in parts) - min(p[1] for p in parts)
    done = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    return {
        "model": parts[0][4],
        "num_prompts": args.num_prompts,
        "concurrency": args.concurrency,
        "client_processes": processes,
        "completed": len(done),
        "failed": len(results) - len(done),
        "output_tokens": output_tokens,
        "elapsed_s": elapsed,
        "request_throughput": len(done) / elapsed,
        "output_tokens_per_s": output_tokens / elapsed,
        "ttft_s": percentiles([r.ttft for r in done]),
        "itl_s": percentiles([i for r in done for i in r.itls]),
        "latency_s": percentiles([r.latency for r in done]),
        # Near 1.0 a client process, one Python thread parsing its streams' events, is what
        # limits the run: add processes.
        "client_cpu_share": max(p[3] / (p[2] - p[1]) for p in parts),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def print_report(report: dict) -> None:
    print(
        f"model {report['model']}: {report['completed']}/{report['num_prompts']} requests ok, "
        f"concurrency {report['concurrency']}, {report['elapsed_s']:.1f} s"
    )
    print(f"request throughput   {report['request_throughput']:8.2f} req/s")
    print(f"output tokens        {report['output_tokens_per_s']:8.1f} tok/s")
    print(
        f"client CPU / wall    {report['client_cpu_share']:8.2f}"
        f" (the busiest of {report['client_processes']} client processes)"
    )
    print(f"{'':20} {'p50':>9} {'p90':>9} {'p99':>9} {'mean':>9}")
    for key, label in (
        ("ttft_s", "TTFT (ms)"),
        ("itl_s", "ITL (ms)"),
        ("latency_s", "latency (ms)"),
    ):
        p = report[key]
        print(
            f"{label:20} {p['p50'] * 1e3:9.1f} {p['p90'] * 1e3:9.1f} {p['p99'] * 1e3:9.1f} {p['mean'] * 1e3:9.1f}"
        )
    for error in report["errors"]:
        print("error:", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="http://127.0.0.1:23333")
    parser.add_argument("--model", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--min-input", type=int, default=8)
    parser.add_argument("--max-input", type=int, default=200)
    parser.add_argument("--min-output", type=int, default=16)
    parser.add_argument("--max-output", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument(
        "--processes", type=int, default=4, help="client processes the streams are spread over"
    )
    parser.add_argument("--output", default="benchmark/results/profile_restful_api.json")
    args = parser.parse_args()
    report = measure(args)
    print_report(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"args": vars(args), **report}, indent=2))


if __name__ == "__main__":
    main()
