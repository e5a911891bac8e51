"""Structured output on the GPU: a batch mixing json_schema, regex and free requests on CUDA.

    python benchmark/gpu_grammar_check.py MODEL_DIR [--device cuda] [--output FILE]

MODEL_DIR is any local HF Llama directory with a tokenizer (random weights will do: the grammar,
not the model, makes the outputs valid). Every constrained output must parse and validate
(or fullmatch its regex) and finish with 'stop'; each free request must equal its solo run.
Prints one line per check and exits non-zero on a failure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
            "ok": {"type": "boolean"},
        },
        "required": ["tags", "ok"],
    },
    {
        "type": "object",
        "properties": {"level": {"enum": ["low", "mid", "high"]}},
        "required": ["level"],
    },
]
REGEXES = [r"call me [A-Za-z]{1,10}", r"[0-9]{3}-[0-9]{4}"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    import jsonschema

    from lmdeploy import GenerationConfig, PytorchEngineConfig, pipeline

    pipe = pipeline(
        args.model_dir,
        backend_config=PytorchEngineConfig(device_type=args.device, session_len=1024),
    )
    free = GenerationConfig(max_new_tokens=24, ignore_eos=True)
    configs, prompts = [], []
    for i, schema in enumerate(SCHEMAS * 4):
        fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}}
        configs.append(
            GenerationConfig(max_new_tokens=200, response_format=fmt, do_sample=True, random_seed=i)
        )
        prompts.append(f"Describe item {i} as JSON.")
    for pattern in REGEXES:
        fmt = {"type": "regex_schema", "regex_schema": pattern}
        configs.append(GenerationConfig(max_new_tokens=64, response_format=fmt))
        prompts.append("Say it.")
    free_prompts = ["Tell me a story.", "Shanghai is"]
    configs += [free] * len(free_prompts)
    prompts += free_prompts

    t = time.perf_counter()
    outs = pipe(prompts, gen_config=configs)
    seconds = time.perf_counter() - t
    failures = []
    for i, (config, out) in enumerate(zip(configs, outs, strict=True)):
        fmt = config.response_format
        if fmt is None:
            solo = pipe(prompts[i], gen_config=free)
            if solo.token_ids != out.token_ids:
                failures.append(f"free request {i} differs from its solo run")
        elif fmt["type"] == "regex_schema":
            if out.finish_reason != "stop" or not re.fullmatch(fmt["regex_schema"], out.text):
                failures.append(f"regex {i}: {out.text!r} ({out.finish_reason})")
        else:
            try:
                jsonschema.validate(json.loads(out.text), fmt["json_schema"]["schema"])
                assert out.finish_reason == "stop", out.finish_reason
            except Exception as exc:  # noqa: BLE001 - report every failing row
                failures.append(f"schema {i}: {out.text!r}: {exc}")
    result = {
        "device": args.device,
        "requests": len(prompts),
        "seconds": seconds,
        "failures": failures,
        "examples": [o.text for o in outs[:3]] + [outs[-len(free_prompts) - 1].text],
    }
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    pipe.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
