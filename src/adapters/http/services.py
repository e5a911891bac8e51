"""What the HTTP routes need from the application, bundled for dependency injection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...application.engine import EngineStats
from ...application.generation import GenerationService
from ...application.latency import HistogramSnapshot
from ...application.sessions import SessionManager


@dataclass
class ServerServices:
    generation: GenerationService
    sessions: SessionManager
    stats: Callable[[], EngineStats]
    model_name: str
    api_keys: tuple[str, ...] = ()
    ttft: Callable[[], HistogramSnapshot] | None = None  # time to first token, for /metrics
    # Why the engine can no longer run (a tensor-parallel rank died), or None: /health's 503.
    failure: Callable[[], str | None] = lambda: None
