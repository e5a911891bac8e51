"""The GrammarBackend port on xgrammar: compile a grammar against the model's vocabulary, once per
spec, and hand each request its own matcher.

xgrammar is imported on first use, so the package (and a GPU image without it) imports fine
until someone asks for a constrained output.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from typing import Any

from ...application.ports import GrammarSpec, ToolCallGrammar
from ...domain.errors import InvalidArgument

logger = logging.getLogger(__name__)


class XGrammarConstraint:
    """One request's matcher (the TokenConstraint port)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._num_accepted = 0

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def num_accepted(self) -> int:
        return self._num_accepted

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        ok = self._matcher.accept_token(token_id)
        if ok:
            self._num_accepted += 1
        return ok

    def is_terminated(self) -> bool:
        return self._matcher.is_terminated()


class XGrammarBackend:
    """Compiles `GrammarSpec`s with xgrammar. `tokenizer` is the transformers tokenizer the
    model's ids come from; `vocab_size` is the width of the model's logits (it may exceed the
    tokenizer's vocabulary: the extra ids are never allowed)."""

    def __init__(
        self, tokenizer: Any, vocab_size: int, max_threads: int = 2, cache_size: int = 256
    ) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = max(vocab_size, len(tokenizer))
        self._max_threads = max_threads
        self._cache_size = cache_size
        self._compiled: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._compiler: Any = None
        self._lock = threading.Lock()  # the pipeline's and the server's threads prepare at once

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def constraint(self, spec: GrammarSpec, stop_token_ids: frozenset[int]) -> XGrammarConstraint:
        import xgrammar as xgr

        matcher = xgr.GrammarMatcher(
            self.compile(spec), override_stop_tokens=sorted(stop_token_ids) or None
        )
        return XGrammarConstraint(matcher, self._vocab_size)

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled grammar of `spec`, from the cache when it was compiled before."""
        with self._lock:
            if spec in self._compiled:
                self._compiled.move_to_end(spec)
                return self._compiled[spec]
            try:
                compiled = self._compile(self._get_compiler(), spec)
            except (RuntimeError, ValueError) as exc:
                raise InvalidArgument(
                    "response_format", f"cannot compile the {spec.kind} grammar: {_first_line(exc)}"
                ) from exc
            self._compiled[spec] = compiled
            if len(self._compiled) > self._cache_size:
                self._compiled.popitem(last=False)
            return compiled

    def _get_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar as xgr

            info = xgr.TokenizerInfo.from_huggingface(self._tokenizer, vocab_size=self._vocab_size)
            self._compiler = xgr.GrammarCompiler(info, max_threads=self._max_threads)
        return self._compiler

    def _compile(self, compiler: Any, spec: GrammarSpec) -> Any:
        # Compact JSON: free whitespace lets a small model pad its way to the length limit.
        if spec.kind == "json_schema":
            schema = json.dumps(bounded_strings_without_controls(json.loads(spec.source)))
            return compiler.compile_json_schema(schema, any_whitespace=False)
        if spec.kind == "json_object":
            return compiler.compile_json_schema(
                spec.source, any_whitespace=False, strict_mode=False
            )
        if spec.kind == "regex":
            return compiler.compile_regex(spec.source)
        if spec.kind == "tool_calls" and spec.tool_calls is not None:
            tag = tool_calls_structural_tag(spec.tool_calls, self._special_tokens())
            return compiler.compile_structural_tag(json.dumps(tag))
        raise ValueError(f"unknown grammar kind {spec.kind!r}")

    def _special_tokens(self) -> set[str]:
        tok = self._tokenizer
        return set(getattr(tok, "all_special_tokens", [])) | {
            t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if t.special
        }


def bounded_strings_without_controls(schema: Any) -> Any:
    """The schema with each length-bounded string given an equivalent pattern that also keeps
    out control characters and escapes: xgrammar 0.2 compiles `maxLength`/`minLength` strings
    to a rule that excludes only quote, backslash, CR and LF, so a raw tab could be generated,
    which is not JSON. A pattern replaces the length rule in xgrammar, hence the bounds in it."""
    if isinstance(schema, list):
        return [bounded_strings_without_controls(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: bounded_strings_without_controls(value) for key, value in schema.items()}
    bounded = "maxLength" in out or "minLength" in out
    if (
        out.get("type") == "string"
        and bounded
        and not {"pattern", "format", "enum", "const"} & set(out)
    ):
        low, high = out.get("minLength", 0), out.get("maxLength", "")
        out["pattern"] = f'^[^\\x00-\\x1f"\\\\]{{{low},{high}}}$'
        out.pop("maxLength", None)
        out.pop("minLength", None)
    return out


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return re.sub(r"^\[[\d:]+\] \S+: ", "", lines[0]) if lines else type(exc).__name__


def _literal(text: str, special: set[str]) -> list[dict[str, Any]]:
    """`text` as structural-tag elements: markers that are special tokens of this vocabulary
    as tokens (their text never matches as a string), the rest as constant strings."""
    present = sorted((s for s in special if s and s in text), key=len, reverse=True)
    parts = re.split(f"({'|'.join(map(re.escape, present))})", text) if present else [text]
    return [
        {"type": "token", "token": part}
        if part in present
        else {"type": "const_string", "value": part}
        for part in parts
        if part
    ]


def _sequence(elements: list[dict[str, Any]]) -> dict[str, Any]:
    return elements[0] if len(elements) == 1 else {"type": "sequence", "elements": elements}


def tool_calls_structural_tag(grammar: ToolCallGrammar, special: set[str]) -> dict[str, Any]:
    """prefix call (separator call)*, each call one of the functions with its schema (one call
    only unless `parallel`)."""
    calls = []
    for name, schema in grammar.functions:
        head, tail = grammar.call_parts(name)
        calls.append(
            _sequence(
                [
                    *_literal(head, special),
                    # One space at most between tokens, as in compact JSON.
                    {
                        "type": "json_schema",
                        "json_schema": bounded_strings_without_controls(json.loads(schema)),
                        "max_whitespace_cnt": 1,
                    },
                    *_literal(tail, special),
                ]
            )
        )
    call = calls[0] if len(calls) == 1 else {"type": "or", "elements": calls}
    elements = [*_literal(grammar.prefix, special), call]
    if grammar.parallel:
        more = _sequence([*_literal(grammar.separator, special), call])
        elements.append({"type": "star", "content": more})
    return {"type": "structural_tag", "format": _sequence(elements)}
