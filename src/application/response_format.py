"""`response_format` as a use case: the documented dict in, a grammar constraint on the request out.

The constraint is created per request by the `GrammarBackend` port and rides in
`SamplingParams.extra[CONSTRAINT]`, opaque to the domain; the model runner masks the request's
logits with it each step and feeds it the sampled tokens.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ..domain.errors import InvalidArgument
from ..domain.sampling_params import SamplingParams
from .ports import GrammarBackend, GrammarSpec

CONSTRAINT = "constraint"  # the SamplingParams.extra key of a request's TokenConstraint
# ... and of what it was compiled from, (GrammarSpec, stop ids): an engine in another process
# compiles its own constraint from it (a compiled grammar does not cross processes).
GRAMMAR = "grammar"
TYPES = ("text", "json_object", "json_schema", "regex_schema")


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument("response_format", message)


def parse_response_format(response_format: dict[str, Any] | None) -> GrammarSpec | None:
    """The grammar a documented `response_format` asks for (None: unconstrained text)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise _bad(f"expected a dict with a 'type', got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind not in TYPES:
        raise _bad(f"type must be one of {', '.join(TYPES)}, got {kind!r}")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", json.dumps({"type": "object"}))
    if kind == "regex_schema":
        regex = response_format.get("regex_schema")
        if not isinstance(regex, str) or not regex:
            raise _bad("type 'regex_schema' needs 'regex_schema': a non-empty regular expression")
        return GrammarSpec("regex", regex)
    body = response_format.get("json_schema")
    schema = body.get("schema") if isinstance(body, dict) else None
    if not isinstance(schema, (dict, bool)):
        raise _bad(
            "type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}} "
            "with the JSON schema as a dict"
        )
    return GrammarSpec("json_schema", json.dumps(schema))


def constrain(
    sampling: SamplingParams,
    spec: GrammarSpec | None,
    backend: GrammarBackend | None,
    eos_token_ids: frozenset[int],
) -> SamplingParams:
    """`sampling` with a fresh constraint for `spec` (compiled now, so a bad one fails before
    anything is submitted). Once the grammar is complete only a stop token may follow, which
    must end the sequence: hence no ignore_eos or min_new_tokens alongside."""
    if spec is None:
        return sampling
    if backend is None:
        raise _bad("this model has no tokenizer vocabulary to compile a grammar against")
    if sampling.ignore_eos or sampling.min_new_tokens:
        raise _bad(
            "a constrained output ends when its grammar is complete; "
            "drop ignore_eos and min_new_tokens"
        )
    stop = frozenset(eos_token_ids) | frozenset(sampling.stop_token_ids)
    constraint = backend.constraint(spec, stop)
    return replace(
        sampling, extra={**sampling.extra, CONSTRAINT: constraint, GRAMMAR: (spec, stop)}
    )


def recompile(sampling: SamplingParams, backend: GrammarBackend | None) -> SamplingParams:
    """`sampling` with a constraint of its own, compiled again from its spec: a constraint holds
    one sequence's state, so each choice of a request, and an engine in another process, needs
    its own (the backend caches compiled grammars: this costs a matcher)."""
    if GRAMMAR not in sampling.extra:
        return sampling
    if backend is None:
        raise _bad("this engine has no grammar backend to compile the request's grammar")
    spec, stop = sampling.extra[GRAMMAR]
    return replace(sampling, extra={**sampling.extra, CONSTRAINT: backend.constraint(spec, stop)})
