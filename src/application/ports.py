"""The outside world as the application sees it: small Protocols that adapters satisfy."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..domain.scheduler import StepPlan


@dataclass(frozen=True)
class CacheGeometry:
    num_blocks: int
    block_size: int
    num_cpu_blocks: int = 0  # the host pool that preemption swaps to (0: recompute only)


@dataclass
class StepOutput:
    """One sampled token per planned sequence, plus optional per-token extras.

    `extras[i]`, for a sequence that asked for them, maps 'logits' / 'last_hidden_state' to
    `(start, rows)`: host tensor rows of positions start, start+1, ... computed this step, and
    'prompt_loss' to `(start, sum, count)` of next-token cross-entropy over this step's prompt
    positions. `errors[i]` set: that sequence's own options failed (a logits processor
    raised); its token is void and the engine aborts it alone.
    """

    token_ids: list[int]
    logprobs: list[dict[int, float] | None] | None = None
    extras: list[dict[str, Any] | None] | None = None
    errors: list[str | None] | None = None


class ModelRunner(Protocol):
    """Runs one forward pass over the paged KV cache and samples the next tokens."""

    @property
    def cache(self) -> CacheGeometry: ...

    # Whether the runner starts a plan's forecast decode step (`StepPlan.forecast`) before the
    # plan's own tokens are returned; the scheduler forecasts only for such a runner.
    decodes_ahead: bool

    def step(self, plan: StepPlan) -> StepOutput: ...

    # Called by the engine loop when it runs out of work after a step: a moment to hand memory
    # that bursts of steps freed back to the system (nothing waits on it).
    def idle(self) -> None: ...


# Joins host-tensor rows of several steps into one [num_rows, dim] tensor; the container wires
# the torch implementation (the application never imports torch).
JoinRows = Callable[[list[Any]], Any]


class Tokenizer(Protocol):
    @property
    def eos_token_ids(self) -> frozenset[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(
        self,
        token_ids: Seq[int],
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = False,
    ) -> str: ...

    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str: ...

    def convert_ids_to_tokens(self, token_ids: Seq[int]) -> list[str]: ...


@dataclass(frozen=True)
class ToolCallGrammar:
    """Tool calls as text: `prefix`, then one (or with `parallel` more) `begin {"name": NAME,
    KEY: ARGS} end` joined by `separator`, where ARGS follows the function's JSON schema.
    With no KEY (`arguments_key` None) a call is `begin ARGS end`, NAME written in `begin`
    where it says `{name}` (Llama 3.1's `<function=NAME>ARGS</function>`)."""

    prefix: str
    begin: str
    end: str
    separator: str
    arguments_key: str | None
    functions: tuple[tuple[str, str], ...]  # (name, parameters as JSON schema text)
    parallel: bool = True  # False: exactly one call

    def call_parts(self, name: str) -> tuple[str, str]:
        """The text before and after the arguments of a call of `name`."""
        if self.arguments_key is None:
            return self.begin.replace("{name}", name), self.end
        key = json.dumps(self.arguments_key)
        return f'{self.begin}{{"name": {json.dumps(name)}, {key}: ', "}" + self.end


@dataclass(frozen=True)
class GrammarSpec:
    """What a request's output must match. Hashable: the backend caches compiled grammars by it."""

    kind: Literal["json_schema", "json_object", "regex", "tool_calls"]
    source: str = ""  # the JSON schema as JSON text, or the regex
    tool_calls: ToolCallGrammar | None = None


class TokenConstraint(Protocol):
    """One request's grammar state: which tokens may come next, and the tokens taken so far.

    Created per request; the model runner fills bitmask rows and feeds back sampled tokens."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def num_accepted(self) -> int: ...

    def fill_bitmask(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into row `row` of an int32 bitmask [rows, ceil(V/32)]."""
        ...

    def accept(self, token_id: int) -> bool: ...

    def is_terminated(self) -> bool: ...


class GrammarBackend(Protocol):
    def constraint(self, spec: GrammarSpec, stop_token_ids: frozenset[int]) -> TokenConstraint:
        """A fresh constraint for one request; InvalidArgument('response_format') when `spec`
        cannot compile. The stop tokens are the only ones allowed once the grammar is complete."""
        ...


@dataclass(frozen=True)
class ChatSettings:
    """The web UI's generation sliders."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.8


@dataclass(frozen=True)
class PreparedImage:
    """One image made ready for its model by `VisionEncoder.preprocess`.

    `pixels`: what the encoder takes (the family's processor output; opaque here).
    `num_tokens`: prompt positions its embeddings fill. `prompt_text`: the text that takes
    IMAGE_TOKEN's place in the rendered prompt; it tokenizes to exactly `num_tokens` ids equal
    to `VisionEncoder.image_token_id` (plus any fixed markers around them, which stay text).
    `digest`: a hash of the pixels (the prefix-cache key). `grid`: the family's token layout
    for positions (Qwen2-VL's (t, h, w)), None for 1-D positions; it travels to the runner
    on `ImageSpan.grid`.
    """

    pixels: Any
    num_tokens: int
    prompt_text: str
    digest: int
    grid: tuple[int, ...] | None = None


class VisionEncoder(Protocol):
    """A vision-language family's image side: preprocess -> encode. The contract a family's
    adapter (adapters/vision/) keeps:

    - `preprocess(image, options)` takes an RGB PIL image and the other keys of its
      `image_url` part (0.6.5's Qwen2-VL reads min_pixels/max_pixels; a family ignores keys
      it has no use for), runs on the caller's thread (CPU work of the family's transformers
      image processor) and says how many prompt positions the image fills: the prompt is
      tokenized once with every image's `prompt_text` in place.
    - `encode(images)` runs on the vision worker's thread, batched across requests (at most
      `VisionConfig.max_batch_size` images a call), and returns one tensor per image,
      [num_tokens, text hidden size] on the runner's device and dtype: the input embeddings
      of the image's positions (vision tower + projector + any packing such as LLaVA-NeXT's
      image_newline). The runner writes them over the token embeddings at those positions.
    - Families whose positions are not 1-D (M-RoPE) set `PreparedImage.grid`; the runner's
      model reads `ImageSpan.grid` to build its positions.
    - `image_separator`: what follows each image the user did not place in the text (they go
      first): "\n" for LLaVA and InternVL, "" for Qwen2-VL (as 0.6.5 and its template write).
    """

    @property
    def image_token_id(self) -> int: ...

    @property
    def image_separator(self) -> str: ...

    def preprocess(self, image: Any, options: Mapping[str, Any] | None = None) -> PreparedImage: ...

    def encode(self, images: list[PreparedImage]) -> list[Any]: ...


class ImageLoader(Protocol):
    def load(self, source: Any, where: str) -> Any:
        """An RGB PIL image from a PIL image, a local path, an http(s) URL or a data: URI
        (base64); InvalidArgument(`where`, ...) when it cannot be read as an image."""
        ...


class ChatBackend(Protocol):
    """Conversations kept by session id: the engine in this process or a remote api_server."""

    def stream_turn(self, session_id: int, prompt: str, settings: ChatSettings) -> Iterator[str]:
        """Generate the reply to one user turn; yield its text piece by piece. The session keeps
        the turn for the next one. Raises ChatTurnFailed when the turn cannot run."""
        ...

    def end_session(self, session_id: int) -> None:
        """Forget the conversation and free its KV cache."""
        ...
