"""Output tokens/s of our engine against transformers' `generate()`, on the CPU.

    python benchmark/profile_generation.py [--batch-sizes 1 16] [--num-prompts N] [--seed 0]
                                           [--threads N] [--repeats R] [--wait-idle S] [--quick]

Both run the default model (the embedded SmolLM2-135M-Instruct GGUF, dequantized to float32)
with the same torch threads, greedy, every request generating exactly its own number of tokens
(ignore_eos / no EOS). Two workloads per batch size, the same requests for both engines:

  varied  prompts of 16..256 tokens, outputs of 16..128 tokens (uniform, seeded)
  equal   every prompt 128 tokens, every output 64 tokens

Our engine gets all requests at once and keeps at most `batch` in flight (continuous batching:
a finished request's place is taken at the next step). transformers runs them in arrival order
in static batches of `batch`, left-padded to the batch's longest prompt, each batch running
until its longest output. Only the tokens each request asked for count, for both; the equal
workload shows the engines' per-step cost without the scheduling gain. Times are wall clock
around the whole call (prefill, decode and, for ours, detokenization), after a warm-up.

Each engine runs in its own process, as deployed: two OpenMP masters in one process (our engine
thread and a main thread running transformers) slow each other down (see NOTES.md). The
machine may be shared: `others%` is the CPU the rest of the system used during a run (from
/proc/stat); a run is repeated (--retries) while it is above 10%, and a number still above it
is not trustworthy.

Prints a table and writes benchmark/results/profile_generation_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "profile_generation_cpu.json"
MODEL = "SmolLM2-135M-Instruct"
# (prompt tokens range, output tokens range) of the varied workload; (prompt, output) of equal.
SHAPES = ((16, 256), (16, 128), (128, 64))
QUICK_SHAPES = ((16, 64), (8, 32), (32, 16))
BUSY_PCT = 10  # a run during which other processes used more CPU than this is not trusted
TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed by "
    "rewiring panels; then came stored programs, assemblers, compilers and operating systems. "
    "Each layer let people think about bigger problems while trusting the layer below. "
    "Networks joined the machines, and the web joined the networks, so that a student with a "
    "laptop can now read the same papers as a professor, run the same experiments, and argue "
    "about the results in public. Language models are the newest layer: they turn text into "
    "numbers, numbers into predictions, and predictions back into text, one token at a time. "
    "Serving them well is a scheduling problem as much as an arithmetic one. "
)


# -- workloads ------------------------------------------------------------------------------------
def make_workloads(token_ids: list[int], num_prompts: int, seed: int, quick: bool) -> list[dict]:
    """[{name, prompts, output_lens}] for the varied and the equal workload."""
    rng = random.Random(seed)
    prompt_range, output_range, equal = QUICK_SHAPES if quick else SHAPES

    def prompt(n: int) -> list[int]:
        start = rng.randrange(0, len(token_ids) - n)
        return token_ids[start : start + n]

    varied = {
        "name": "varied",
        "prompts": [prompt(rng.randint(*prompt_range)) for _ in range(num_prompts)],
        "output_lens": [rng.randint(*output_range) for _ in range(num_prompts)],
    }
    same = {
        "name": "equal",
        "prompts": [prompt(equal[0]) for _ in range(num_prompts)],
        "output_lens": [equal[1]] * num_prompts,
    }
    return [varied, same]


def model_file() -> Path:
    from lmdeploy.adapters.loaders.model_source import embedded_model_file

    return embedded_model_file()


def tokenize_text() -> list[int]:
    from transformers import AutoTokenizer

    path = model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return tokenizer.encode(TEXT * 12, add_special_tokens=False)


# -- measuring ------------------------------------------------------------------------------------
class OthersBusy:
    """Share of all CPU time used by other processes while the block ran (Linux only)."""

    def __enter__(self) -> OthersBusy:
        self._start = self._read()
        self.pct = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self._start is None or end is None:
            return
        total, idle, own = (e - s for e, s in zip(end, self._start, strict=True))
        self.pct = 100.0 * max(0, total - idle - own) / max(total, 1)

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            cpu = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return sum(cpu[:8]), cpu[3] + cpu[4], int(own[11]) + int(own[12])


def wait_for_idle(max_seconds: float, idle_share: float = 0.9) -> None:
    """Wait (at most `max_seconds`) for a second in which other processes leave the CPUs
    mostly idle: on a shared 2-core machine one busy process made a 2-thread run 2-10x slower."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_seconds:
        with OthersBusy() as busy:
            time.sleep(1.0)
        if busy.pct <= 100 * (1 - idle_share):
            return


# -- the two engines (each in its own worker process) ---------------------------------------------
class Ours:
    def __init__(self, max_batch_size: int) -> None:
        from lmdeploy import PytorchEngineConfig, pipeline

        self.pipes: dict[int, object] = {}
        self.max_batch_size = max_batch_size
        self._pipeline, self._config = pipeline, PytorchEngineConfig

    def _pipe(self, batch: int):
        # Batch 1 is one request at a time: any engine serves it; others need their own cap.
        key = self.max_batch_size if batch == 1 else batch
        if key not in self.pipes:
            config = self._config(device_type="cpu", max_batch_size=key, cache_max_entry_count=0.25)
            self.pipes[key] = self._pipeline(MODEL, backend_config=config)
        return self.pipes[key]

    def run(self, prompts: list[list[int]], output_lens: list[int], batch: int):
        from lmdeploy import GenerationConfig

        pipe = self._pipe(batch)
        configs = [GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in output_lens]
        start = time.perf_counter()
        if batch == 1:
            responses = [pipe(p, gen_config=c) for p, c in zip(prompts, configs, strict=True)]
        else:
            responses = pipe(prompts, gen_config=configs)
        seconds = time.perf_counter() - start
        for r, n in zip(responses, output_lens, strict=True):
            assert r.generate_token_len == n, f"asked for {n} tokens, got {r.generate_token_len}"
        return seconds, sum(output_lens), [r.token_ids for r in responses]

    def close(self) -> None:
        for pipe in self.pipes.values():
            pipe.close()


class Transformers:
    def __init__(self, max_batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = model_file()
        self.model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
        self.pad_id = self.model.generation_config.pad_token_id or 0

    def run(self, prompts: list[list[int]], output_lens: list[int], batch: int):
        """Static batching: each batch of `batch` runs until its longest request."""
        import torch

        outputs: list[list[int]] = []
        computed = 0
        start = time.perf_counter()
        for i in range(0, len(prompts), batch):
            chunk, lens = prompts[i : i + batch], output_lens[i : i + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.inference_mode():
                out = self.model.generate(
                    ids,
                    attention_mask=mask,
                    max_new_tokens=max(lens),
                    do_sample=False,
                    eos_token_id=None,
                    pad_token_id=self.pad_id,
                )
            assert out.shape[1] == width + max(lens), "transformers stopped early"
            outputs += [row[width : width + n].tolist() for row, n in zip(out, lens, strict=True)]
            computed += len(chunk) * max(lens)
        return time.perf_counter() - start, computed, outputs

    def close(self) -> None:
        pass


def worker(engine_name: str, spec_path: Path) -> None:
    """Run every (batch, workload) of the spec on one engine; print one JSON line."""
    import torch

    spec = json.loads(spec_path.read_text())
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    max_batch = max(run["batch"] for run in spec["runs"])
    engine = (Ours if engine_name == "ours" else Transformers)(max_batch)
    results = []
    for run in spec["runs"]:
        engine.run([[1, 2, 3, 4] * 4] * 2, [4, 4], run["batch"])  # warm-up; builds any pipeline
        timings, others = [], []
        for _ in range(spec["repeats"]):
            for _ in range(1 + spec["retries"]):  # again while another process took the CPUs
                wait_for_idle(spec["wait_idle"])
                with OthersBusy() as busy:
                    seconds, computed, outputs = engine.run(
                        run["prompts"], run["output_lens"], run["batch"]
                    )
                if busy.pct <= BUSY_PCT:
                    break
            timings.append(seconds)
            others.append(busy.pct)
        results.append(
            {
                "seconds": statistics.median(timings),
                "all_seconds": timings,
                "computed": computed,
                "outputs": outputs,
                "others": max(others),
            }
        )
    engine.close()
    info = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(info | {"results": results}))


def run_worker(engine_name: str, spec_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", engine_name, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {engine_name} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ---------------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    head = (
        f"{'batch':>5} {'workload':>8} {'reqs':>5} {'out tok':>8} {'ours tok/s':>11} "
        f"{'HF tok/s':>9} {'ours/HF':>8} {'HF idle rows':>12} {'same ids':>9} {'others%':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['batch']:>5} {r['workload']:>8} {r['num_requests']:>5} "
            f"{r['num_output_tokens']:>8} {r['ours_tokens_per_s']:>11.1f} "
            f"{r['hf_tokens_per_s']:>9.1f} {r['ratio']:>7.2f}x "
            f"{r['hf_idle_row_pct']:>11.0f}% {r['identical_outputs']:>4}/{r['num_requests']:<4} "
            f"{r['max_others_busy_pct']:>7.0f}%"
        )
    return "\n".join(lines)


def summarize(runs: list[dict], ours: dict, hf: dict) -> list[dict]:
    rows = []
    for run, a, b in zip(runs, ours["results"], hf["results"], strict=True):
        useful = sum(run["output_lens"])
        rows.append(
            {
                "batch": run["batch"],
                "workload": run["name"],
                "num_requests": len(run["prompts"]),
                "num_output_tokens": useful,
                "ours_seconds": a["seconds"],
                "hf_seconds": b["seconds"],
                "ours_all_seconds": a["all_seconds"],
                "hf_all_seconds": b["all_seconds"],
                "ours_tokens_per_s": useful / a["seconds"],
                "hf_tokens_per_s": useful / b["seconds"],
                "ratio": b["seconds"] / a["seconds"],
                "hf_computed_tokens": b["computed"],
                "hf_idle_row_pct": 100.0 * (1 - useful / b["computed"]),
                "identical_outputs": sum(
                    x == y for x, y in zip(a["outputs"], b["outputs"], strict=True)
                ),
                "ours_others_busy_pct": a["others"],
                "hf_others_busy_pct": b["others"],
                "max_others_busy_pct": max(a["others"], b["others"]),
            }
        )
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="requests per workload (default: 2 x batch size, at least 4; --quick: batch size)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="short prompts and outputs: a smoke run")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each timed run wait up to this many seconds for other processes to go quiet",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed runs per engine and workload; the median counts (identical quiet runs "
        "differ by 10-15%% on the 2-core machine, see NOTES.md)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help=f"runs again (at most this often) when others used over {BUSY_PCT}%% of the CPUs",
    )
    ap.add_argument("--output", type=Path, default=None)
    ap.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="cuda: decode speed of a real-size model (benchmark/gpu_generation.py)",
    )
    ap.add_argument(
        "--load-format",
        default="auto",
        choices=["auto", "dummy"],
        help="cuda runs use dummy weights of --model-config",
    )
    ap.add_argument("--model-config", default="llama-3-8b", help="shipped config for --device cuda")
    ap.add_argument("--input-len", type=int, default=128, help="--device cuda: prompt tokens")
    ap.add_argument("--output-len", type=int, default=128, help="--device cuda: output tokens")
    ap.add_argument("--eager", action="store_true", help="--device cuda: no CUDA graphs")
    ap.add_argument("--worker", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.device == "cuda":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import gpu_generation

        if args.batch_sizes == [1, 16]:
            args.batch_sizes = [1, 16, 64, 256]
        gpu_generation.main(args)
        return
    args.output = args.output or RESULTS
    if args.worker:
        worker(args.worker, args.spec)
        return
    token_ids = tokenize_text()
    runs = []
    for batch in args.batch_sizes:
        num = args.num_prompts or (batch if args.quick else max(4, 2 * batch))
        for workload in make_workloads(token_ids, num, args.seed + batch, args.quick):
            runs.append({"batch": batch, **workload})
    spec = {
        "runs": runs,
        "threads": args.threads,
        "wait_idle": args.wait_idle,
        "retries": args.retries,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        ours = run_worker("ours", spec_path)
        hf = run_worker("transformers", spec_path)
    rows = summarize(runs, ours, hf)

    print(table(rows))
    print(
        "ours/HF: output tokens/s ratio. HF idle rows: decode slots static batching spent on "
        "requests already done. same ids: requests whose greedy ids are equal. others%: CPU used "
        "by other processes during the run."
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "model": MODEL,
        "device": "cpu",
        "dtype": "float32",
        "torch": ours["torch"],
        "torch_threads": ours["threads"],
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": rows,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
