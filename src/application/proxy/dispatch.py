"""Choose the node for a request: a healthy node serving its model, by the strategy."""

from __future__ import annotations

import random
from collections.abc import Collection

from ...domain.errors import LMDeployError
from .nodes import NodeTable
from .strategies import STRATEGIES, pick_node


class UnknownModel(LMDeployError):
    """No registered node serves the model."""

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(
            f"The model `{model}` does not exist on any node; "
            f"the nodes serve: {', '.join(known) or 'nothing yet (add a node)'}"
        )
        self.model = model


class NoHealthyNode(LMDeployError):
    """Nodes serve the model, but none of them answers now."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"no healthy node serves the model `{model}` now; retry later or add a node "
            "(GET /nodes/status lists the nodes and their health)"
        )
        self.model = model


class Dispatcher:
    def __init__(self, table: NodeTable, strategy: str, rng: random.Random | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        self.table = table
        self.strategy = strategy
        self._rng = rng or random.Random()

    def choose(self, model: str, exclude: Collection[str] = ()) -> str:
        """A node for `model` other than those in `exclude` (already tried for this request)."""
        serving = [(url, s) for url, s in self.table.items() if model in s.models]
        if not serving:
            raise UnknownModel(model, self.table.model_names())
        candidates = [(url, s) for url, s in serving if s.healthy and url not in exclude]
        if not candidates:
            raise NoHealthyNode(model)
        return pick_node(self.strategy, candidates, self._rng)
