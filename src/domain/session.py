"""A conversation whose history stays with the server between requests."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Session:
    session_id: int
    history_token_ids: list[int] = field(default_factory=list)
    step: int = 0
    busy: bool = False

    def extend(self, token_ids: list[int]) -> None:
        self.history_token_ids.extend(token_ids)
        self.step = len(self.history_token_ids)
