"""OutputRows: rows by position across prefill chunks, stop tokens and recomputes."""

from __future__ import annotations

from lmdeploy.application.output_rows import OutputRows


def _rows(start: int, num: int) -> list[str]:
    return [f"p{p}" for p in range(start, start + num)]


def _join(chunks):
    return [row for chunk in chunks for row in chunk]


def test_chunks_join_in_position_order_and_a_stop_tokens_row_is_dropped():
    rows = OutputRows(_join)
    rows.add({"logits": (0, _rows(0, 4))})
    rows.add({"logits": (4, _rows(4, 3))})
    assert rows.take("logits") == _rows(0, 7)
    rows.add({"logits": (7, _rows(7, 1))}, drop_last=True)
    assert rows.take("logits") is None


def test_a_recompute_after_preemption_skips_rows_already_taken_and_restarts_the_loss():
    rows = OutputRows(_join)
    rows.add({"logits": (0, _rows(0, 5)), "prompt_loss": (0, 2.0, 4)})
    assert rows.take("logits") == _rows(0, 5)
    rows.add({"logits": (0, _rows(0, 8)), "prompt_loss": (0, 3.0, 7)})  # recomputed from 0
    rows.add({"prompt_loss": (8, 1.0, 2)})
    assert rows.take("logits") == _rows(5, 3)
    assert (rows.loss_sum, rows.loss_count) == (4.0, 9)


def test_generation_rows_start_at_the_last_prompt_position():
    rows = OutputRows(_join)
    for p in range(9, 12):
        rows.add({"last_hidden_state": (p, _rows(p, 1))})
    assert rows.take("last_hidden_state") == _rows(9, 3)
    assert rows.take("logits") is None
