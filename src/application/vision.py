"""Images of a request: load and preprocess them on the caller's thread, encode them on a
worker thread of their own, then hand the request to the engine.

Encoding runs off the engine loop, so text requests keep decoding while images go through the
vision tower. The worker gathers the images of every waiting request, up to
`VisionConfig.max_batch_size` a pass, so concurrent requests share vision-tower batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..domain.errors import InvalidArgument
from ..domain.sequence import ImageSpan
from .multimodal import ImageRef
from .ports import ImageLoader, PreparedImage, VisionEncoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingImage:
    """An image of a prepared request: its span in the prompt and what its encoder takes."""

    span: ImageSpan
    prepared: PreparedImage


@dataclass
class _Job:
    images: list[PendingImage]
    on_ready: Callable[[], None]
    on_error: Callable[[str], None]


class VisionService:
    def __init__(
        self,
        encoder: VisionEncoder,
        loader: ImageLoader,
        max_batch_size: int = 1,
        model_name: str = "",
    ) -> None:
        self.encoder = encoder
        self.loader = loader
        self.max_batch_size = max_batch_size
        self.model_name = model_name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def image_token_id(self) -> int:
        return self.encoder.image_token_id

    @property
    def image_separator(self) -> str:
        return self.encoder.image_separator

    def prepare(self, refs: list[ImageRef], session_len: int) -> list[PreparedImage]:
        """Load and preprocess each image; InvalidArgument naming the image's part when one
        cannot be read or alone would not fit the session."""
        prepared = []
        for ref in refs:
            image = self.encoder.preprocess(self.loader.load(ref.source, ref.where), ref.options)
            if image.num_tokens >= session_len:
                raise InvalidArgument(
                    ref.where,
                    f"this image takes {image.num_tokens} tokens, which leaves no room in "
                    f"session_len={session_len}; send a smaller image or raise session_len",
                )
            prepared.append(image)
        return prepared

    # -- the worker ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmdeploy-vision", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def encode_then(
        self,
        images: list[PendingImage],
        on_ready: Callable[[], None],
        on_error: Callable[[str], None],
    ) -> None:
        """Fill each span's embeddings on the worker, then call `on_ready` there (or
        `on_error` with a message when encoding failed). Spans already filled (another choice
        of the same request) are not encoded again."""
        self._jobs.put(_Job(images, on_ready, on_error))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs = [job]
            # Requests that arrived meanwhile share the passes (bounded by max_batch_size each).
            while not self._jobs.empty():
                more = self._jobs.get_nowait()
                if more is None:
                    self._jobs.put(None)
                    break
                jobs.append(more)
            self._encode(jobs)

    def _encode(self, jobs: list[_Job]) -> None:
        todo: list[PendingImage] = []
        for job in jobs:
            for pending in job.images:
                if pending.span.embeddings is None and all(
                    t.span is not pending.span for t in todo
                ):
                    todo.append(pending)
        failed: str | None = None
        for start in range(0, len(todo), self.max_batch_size):
            batch = todo[start : start + self.max_batch_size]
            try:
                embeddings = self.encoder.encode([p.prepared for p in batch])
            except Exception as exc:  # a bad image or out of memory: its requests end alone
                logger.error("encoding %d images failed: %s", len(batch), exc)
                failed = f"the vision encoder failed ({type(exc).__name__}: {exc}); retry"
                break
            for pending, rows in zip(batch, embeddings, strict=True):
                pending.span.embeddings = rows
        for job in jobs:
            if all(p.span.embeddings is not None for p in job.images):
                try:
                    job.on_ready()
                except Exception as exc:  # the engine closed meanwhile
                    job.on_error(str(exc))
            else:
                job.on_error(failed or "the image was not encoded; retry")
