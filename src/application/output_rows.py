"""A request's per-position outputs as they arrive from the engine: logits and last hidden
state rows (output_logits / output_last_hidden_state) and the prompt's cross-entropy (get_ppl).

Rows come tagged with their first position. After a preemption the engine recomputes from
position 0, so rows already taken are skipped, and the loss restarts.
"""

from __future__ import annotations

from typing import Any

from .ports import JoinRows

ROW_OUTPUTS = ("logits", "last_hidden_state")


class OutputRows:
    def __init__(self, join: JoinRows | None) -> None:
        self._join = join
        self._pending: dict[str, list[Any]] = {name: [] for name in ROW_OUTPUTS}
        self._next: dict[str, int | None] = dict.fromkeys(ROW_OUTPUTS)
        self.loss_sum = 0.0
        self.loss_count = 0

    def add(self, extras: dict[str, Any], drop_last: bool = False) -> None:
        """`drop_last`: the step's token is a stop token the output leaves out; so is its row."""
        for name in ROW_OUTPUTS:
            if name not in extras:
                continue
            start, rows = extras[name]
            if drop_last:
                rows = rows[:-1]
            seen = self._next[name]
            skip = 0 if seen is None else max(0, seen - start)
            if skip < len(rows):
                self._pending[name].append(rows[skip:])
                self._next[name] = start + len(rows)
        if "prompt_loss" in extras:
            start, total, count = extras["prompt_loss"]
            if start == 0:  # the first chunk, or a recompute after preemption
                self.loss_sum, self.loss_count = 0.0, 0
            self.loss_sum += total
            self.loss_count += count

    def take(self, name: str) -> Any:
        """The rows that arrived since the last take, as one tensor (None if none)."""
        chunks, self._pending[name] = self._pending[name], []
        if not chunks:
            return None
        if self._join is None:
            raise RuntimeError("this engine was wired without a JoinRows for its output rows")
        return self._join(chunks)
