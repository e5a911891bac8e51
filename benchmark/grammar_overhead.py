"""What a grammar costs per decode step: 16 constrained requests against 16 free ones.

    python benchmark/grammar_overhead.py [--batch 16] [--tokens 48] [--repeats 3]

Both batches run the default model greedy, the same prompts, every request generating exactly
`--tokens` tokens: the free ones with their stop tokens banned, the constrained ones under a
regex no reply can complete in that many tokens (so none stops early). Reported per decode step (the median
over `--repeats` runs): the runner's whole step, and within it the grammar's share (filling
the bitmask on the host, applying it to the logits, feeding the matchers the sampled tokens).
The machine may be shared: compare the two rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline
from lmdeploy.adapters.engines.pytorch.runner import runner
from lmdeploy.adapters.engines.pytorch.sampling import grammar_mask

PROMPT = "Write a long list of lowercase words about the sea, separated by spaces. Number {i}."
REGEX = "[a-z ]{400,600}"  # at least 400 characters: more than `tokens` tokens can hold


def timed(cls, name: str, totals: dict[str, list[float]]) -> None:
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[name].append(time.perf_counter() - start)

    setattr(cls, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    totals: dict[str, list[float]] = defaultdict(list)
    timed(runner.PytorchModelRunner, "step", totals)
    for name in ("from_plan", "apply", "accept"):
        timed(grammar_mask.GrammarMask, name, totals)
    pipe = pipeline(None, backend_config=PytorchEngineConfig(session_len=1024))
    prompts = [PROMPT.format(i=i) for i in range(args.batch)]
    configs = {
        # The template's stop words stop even with ignore_eos: ban every stop token instead.
        "free": GenerationConfig(
            max_new_tokens=args.tokens, bad_token_ids=sorted(pipe.service.tokenizer.eos_token_ids)
        ),
        "constrained": GenerationConfig(
            max_new_tokens=args.tokens,
            response_format={"type": "regex_schema", "regex_schema": REGEX},
        ),
    }
    pipe(prompts[:2], gen_config=configs["constrained"])  # warm-up, and the grammar compiled
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _ in range(args.repeats):
        for label, config in configs.items():
            totals.clear()
            outs = pipe(prompts, gen_config=config)
            assert all(o.generate_token_len == args.tokens for o in outs), label
            steps = totals["step"][1:]  # the first step is the batch's prefill
            rows[label]["step"].append(statistics.median(steps) * 1e3)
            grammar = sum(sum(totals[n]) for n in ("from_plan", "apply", "accept"))
            rows[label]["grammar"].append(grammar / len(totals["step"]) * 1e3)
    pipe.close()
    print(f"batch {args.batch}, {args.tokens} tokens each; ms per decode step (median)")
    for label, values in rows.items():
        step, grammar = (statistics.median(values[k]) for k in ("step", "grammar"))
        print(f"{label:>12}: step {step:7.2f}   of which grammar {grammar:6.2f}")


if __name__ == "__main__":
    main()
