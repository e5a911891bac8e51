"""The documented configuration objects: GenerationConfig, engine configs, ChatTemplateConfig."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..domain.errors import InvalidArgument, InvalidConfig
from ..domain.sampling_params import SamplingParams, check_int
from .response_format import parse_response_format

MAX_CHOICES = 1024  # n: each choice is a sequence in the batch
MAX_WORDS = 64  # stop_words / bad_words: each is searched for after every token
MAX_WORD_LEN = 256  # characters; a stop word also holds back this much streamed text
# model_format: the weights' layout. None: the checkpoint's own (its quantization_config).
MODEL_FORMATS = (None, "hf", "meta_llama", "awq", "gptq")


def check_words(name: str, words: object) -> None:
    if words is None:
        return
    if not isinstance(words, (list, tuple)) or len(words) > MAX_WORDS:
        raise InvalidArgument(name, f"must be a list of at most {MAX_WORDS} strings")
    for word in words:
        if not isinstance(word, str) or not 0 < len(word) <= MAX_WORD_LEN:
            raise InvalidArgument(
                name,
                f"each item must be a string of 1 to {MAX_WORD_LEN} characters, got {word!r:.80}",
            )


@dataclass
class GenerationConfig:
    """Generation parameters, as documented; beyond the documentation's text:

    - `n`: choices per prompt. `pipe(prompts, GenerationConfig(n=k))` returns a flat list of
      len(prompts) * k Responses, prompt-major (all choices of prompt 0, then prompt 1, ...),
      each with `index` = its prompt's index; `stream_infer` tags each delta the same way. The
      choices share the prompt's KV blocks (computed once). With `random_seed`, choice 0 uses
      the seed and choice i a seed derived from (seed, i): the choices differ, and the whole
      result reproduces. Greedy decoding gives k equal choices.
    - `logits_processors`: callables `fn(input_ids, scores) -> scores`, input_ids the
      sequence's ids so far (prompt + generated, 1-D LongTensor on the logits' device), scores
      that row's logits [vocab] float32; applied in order after bad words, min_new_tokens and
      repetition penalty, before temperature and top-k/top-p/min-p. One that raises or returns
      another shape aborts its own request (finish_reason 'abort', the error logged).
    - `output_logits` / `output_last_hidden_state`: `Response.logits` [rows, vocab] and
      `Response.last_hidden_state` [rows, hidden], host tensors of the raw model outputs. Row i
      of 'all' is position i of prompt + token_ids (it predicts token i + 1): P + G - 1 rows for
      P prompt and G returned tokens. 'generation' is the G rows from position P - 1 on, row j
      the one that produced token_ids[j]. 'all' computes the whole prompt (no prefix-cache
      reuse). stream_infer deltas carry the rows that arrived with them.
    - `spaces_between_special_tokens`: with skip_special_tokens=False, the text is decoded in
      runs between added (special) tokens, and runs and special tokens are joined by one
      space, as transformers' slow tokenizers do ("a<|im_end|>b" -> "a <|im_end|> b"). It
      changes nothing when special tokens are skipped.
    - Limits, checked here so that a bad value fails before anything runs: `n` <= 1024,
      `random_seed` in [0, 2^63 - 1], counts below 2^31, at most 64 stop / bad words of at
      most 256 characters each.
    - A forward pass that fails (out of memory, a kernel error) ends the requests of that step
      with finish_reason 'error' (the error is logged); the other requests go on.
    """

    n: int = 1
    max_new_tokens: int = 512
    do_sample: bool = False
    top_p: float = 1.0
    top_k: int = 50
    min_p: float = 0.0
    temperature: float = 0.8
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    random_seed: int | None = None
    stop_words: list[str] | None = None
    bad_words: list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_token_ids: list[int] | None = None
    min_new_tokens: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logprobs: int | None = None
    response_format: dict | None = None
    logits_processors: list[Callable] | None = None
    output_logits: Literal["all", "generation"] | None = None
    output_last_hidden_state: Literal["all", "generation"] | None = None

    def __post_init__(self) -> None:
        try:
            check_int("n", self.n, 1, MAX_CHOICES)
            for name in ("stop_words", "bad_words"):
                check_words(name, getattr(self, name))
        except InvalidArgument as exc:
            raise InvalidConfig.of(exc) from None
        if self.logits_processors is not None and not isinstance(
            self.logits_processors, (list, tuple)
        ):
            raise InvalidConfig("logits_processors", "must be a list of callables")
        if not 0 <= self.temperature <= 2:
            raise InvalidConfig("temperature", f"must be in [0, 2], got {self.temperature}")
        try:  # build once so that a bad value fails here, naming the argument
            self.to_sampling_params()
            parse_response_format(self.response_format)
        except InvalidArgument as exc:
            raise InvalidConfig.of(exc) from None

    def to_sampling_params(
        self, stop_token_ids: list[int] | None = None, bad_token_ids: list[int] | None = None
    ) -> SamplingParams:
        """Greedy unless `do_sample` is set; `top_k=1` or `temperature=0` is greedy too."""
        greedy = not self.do_sample or self.top_k == 1 or self.temperature == 0
        stop = tuple(self.stop_token_ids or ()) + tuple(stop_token_ids or ())
        bad = tuple(self.bad_token_ids or ()) + tuple(bad_token_ids or ())
        if self.ignore_eos:  # as 0.6.5: the stop tokens are banned, so max_new_tokens all come
            stop, bad = (), bad + stop
        return SamplingParams(
            max_new_tokens=self.max_new_tokens,
            temperature=0.0 if greedy else self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            ignore_eos=self.ignore_eos,
            min_new_tokens=self.min_new_tokens or 0,
            stop_token_ids=stop,
            bad_token_ids=bad,
            random_seed=self.random_seed,
            logprobs=self.logprobs,
            logits_processors=tuple(self.logits_processors or ()),
            output_logits=self.output_logits,
            output_last_hidden_state=self.output_last_hidden_state,
        )


def _reject_unsupported(config: Any, supported: dict[str, Any]) -> None:
    """A documented field we cannot honour yet fails loudly instead of being ignored."""
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in supported and value not in (f.default, supported[f.name]):
            raise InvalidConfig(
                f.name,
                f"{type(config).__name__}.{f.name}={value!r} is not supported by this "
                f"build yet; leave it at its default ({f.default!r})",
            )


def _check_common(config: Any) -> None:
    if config.dtype not in ("auto", "float16", "bfloat16", "float32"):
        raise InvalidConfig(
            "dtype", f"must be auto, float16, bfloat16 or float32, got {config.dtype!r}"
        )
    if not 0 < config.cache_max_entry_count <= 1:
        raise InvalidConfig(
            "cache_max_entry_count",
            f"must be a fraction of free memory in (0, 1], got {config.cache_max_entry_count}",
        )
    if config.tp < 1:
        raise InvalidConfig("tp", f"must be >= 1, got {config.tp}")
    if config.session_len is not None and config.session_len < 2:
        raise InvalidConfig("session_len", f"must be >= 2, got {config.session_len}")
    if config.max_batch_size is not None and config.max_batch_size < 1:
        raise InvalidConfig("max_batch_size", f"must be >= 1, got {config.max_batch_size}")
    if config.quant_policy not in (0, 4, 8):
        raise InvalidConfig(
            "quant_policy", f"must be 0, 4 or 8 (bits of the KV cache), got {config.quant_policy}"
        )
    if config.max_prefill_token_num < 1:
        raise InvalidConfig(
            "max_prefill_token_num", f"must be >= 1, got {config.max_prefill_token_num}"
        )
    if config.model_format not in MODEL_FORMATS:
        raise InvalidConfig(
            "model_format",
            f"must be one of {', '.join(map(str, MODEL_FORMATS[1:]))} (or None: the "
            f"checkpoint's own), got {config.model_format!r}",
        )


def _check_nodes(config: PytorchEngineConfig) -> None:
    if config.nnodes < 1:
        raise InvalidConfig("nnodes", f"must be >= 1, got {config.nnodes}")
    if not 0 <= config.node_rank < config.nnodes:
        raise InvalidConfig(
            "node_rank", f"must be in [0, nnodes={config.nnodes}), got {config.node_rank}"
        )
    if config.tp % config.nnodes:
        raise InvalidConfig(
            "nnodes",
            f"tp={config.tp} ranks cannot be spread evenly over {config.nnodes} nodes; "
            f"choose a tp that is a multiple of nnodes",
        )
    if config.distributed_executor_backend not in (None, "mp", "ray"):
        raise InvalidConfig(
            "distributed_executor_backend",
            f"must be 'mp', 'ray' or None, got {config.distributed_executor_backend!r}",
        )
    if config.nnodes > 1 and config.distributed_executor_backend == "mp":
        raise InvalidConfig(
            "distributed_executor_backend",
            f"'mp' starts ranks on this machine only; nnodes={config.nnodes} needs 'ray'",
        )


@dataclass
class PytorchEngineConfig:
    dtype: str = "auto"
    tp: int = 1
    session_len: int | None = None
    max_batch_size: int | None = None
    cache_max_entry_count: float = 0.8
    prefill_interval: int = 16
    block_size: int = 64
    num_cpu_blocks: int = 0
    num_gpu_blocks: int = 0
    adapters: dict[str, str] | None = None
    max_prefill_token_num: int = 4096
    thread_safe: bool = False
    enable_prefix_caching: bool = False
    device_type: str = "cuda"
    eager_mode: bool = False
    # 0.6.5's documented form is a path to a .py file defining MODULE_MAP; a dict maps
    # architecture -> 'package.module.Class' (its type hint). Read by the engine's builder.
    custom_module_map: str | os.PathLike | dict[str, Any] | None = None
    download_dir: str | None = None
    revision: str | None = None
    quant_policy: Literal[0, 4, 8] = 0
    load_format: str = "auto"
    # Not in 0.6.5's PytorchEngineConfig (TurboMind's field): 'awq' / 'gptq' for a 4-bit
    # checkpoint that lacks a quantization_config, or with load_format='dummy'.
    model_format: str | None = None
    # Not in 0.6.5: LoRA adapters resident on the device at once (0: all of `adapters`); the
    # others wait in host memory and are swapped in when a request needs them.
    max_loras: int = 0
    # Not in 0.6.5: on a CPU with dtype 'auto', a GGUF file's Q4_0/Q4_1/Q8_0 matrices stay in
    # their blocks either way; by default they multiply float32 activations (the float path's
    # results up to summation order). With this on, they and Q4_K/Q6_K run through
    # llama.cpp-style integer kernels on activations rounded to 8 bits: faster decode, but
    # greedy ids may leave the float path's on near-ties (see README). dtype='float32'
    # dequantizes the weights instead.
    gguf_int_kernels: bool = False
    # Multi-node tensor parallelism through Ray (distributed/ray_workers.py): the ranks span
    # `nnodes` machines of one Ray cluster; the engine runs on node 0. `distributed_executor_backend`
    # picks how ranks 1..tp-1 start: "mp" (processes on this machine), "ray" (actors of a Ray
    # cluster); None: "ray" when nnodes > 1, else "mp".
    nnodes: int = 1
    node_rank: int = 0
    distributed_executor_backend: str | None = None
    # Not a documented argument: TurbomindEngineConfig.rope_scaling_factor arrives here through
    # `to_pytorch` (an HF-style rope_scaling dict that overrides the model's own).
    rope_scaling: dict[str, Any] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _check_common(self)
        if self.block_size < 1:
            raise InvalidConfig("block_size", f"must be >= 1, got {self.block_size}")
        if self.num_gpu_blocks < 0:
            raise InvalidConfig(
                "num_gpu_blocks", f"must be >= 0 (0 sizes the cache), got {self.num_gpu_blocks}"
            )
        if not isinstance(self.num_cpu_blocks, int) or self.num_cpu_blocks < 0:
            raise InvalidConfig(
                "num_cpu_blocks",
                f"must be an int >= 0 (host-memory KV blocks that preemption swaps to; 0 "
                f"recomputes instead), got {self.num_cpu_blocks!r}",
            )
        if self.device_type not in ("cuda", "cpu", "ascend"):
            raise InvalidConfig(
                "device_type", f"must be cuda, cpu or ascend, got {self.device_type!r}"
            )
        if self.load_format not in ("auto", "dummy"):
            raise InvalidConfig(
                "load_format", f"must be 'auto' or 'dummy', got {self.load_format!r}"
            )
        if self.model_format == "meta_llama":
            raise InvalidConfig(
                "model_format",
                "meta_llama (Meta's original checkpoint layout) is not supported by this build; "
                "convert the checkpoint to HF format (transformers' convert_llama_weights_to_hf)",
            )
        if not isinstance(self.custom_module_map, str | os.PathLike | dict | None):
            raise InvalidConfig(
                "custom_module_map",
                f"must be the path of a .py file defining MODULE_MAP (or a dict of architecture "
                f"-> 'package.module.Class'), got {self.custom_module_map!r}",
            )
        _check_nodes(self)
        if not isinstance(self.prefill_interval, int) or self.prefill_interval < 0:
            raise InvalidConfig(
                "prefill_interval",
                f"must be an int >= 0 (decode steps a new prompt may wait for a full batch; "
                f"0 admits at once), got {self.prefill_interval!r}",
            )
        _check_adapters(self.adapters, self.max_loras)


def _check_adapters(adapters: dict[str, str] | None, max_loras: int) -> None:
    if adapters is not None and not (
        isinstance(adapters, dict)
        and all(
            isinstance(k, str) and k and isinstance(v, str | os.PathLike)
            for k, v in adapters.items()
        )
    ):
        raise InvalidConfig(
            "adapters", f"must map adapter names to PEFT directories, got {adapters!r}"
        )
    if isinstance(max_loras, bool) or not isinstance(max_loras, int) or max_loras < 0:
        raise InvalidConfig(
            "max_loras", f"must be an int >= 0 (0: every adapter resident), got {max_loras!r}"
        )


# A pydantic dataclass as in 0.6.5: a bad field raises pydantic's ValidationError.
@pydantic_dataclass
class TurbomindEngineConfig:
    dtype: str = "auto"
    model_format: str | None = None
    tp: int = 1
    session_len: int | None = None
    max_batch_size: int | None = None
    cache_max_entry_count: float = 0.8
    cache_chunk_size: int = -1
    cache_block_seq_len: int = 64
    enable_prefix_caching: bool = False
    quant_policy: int = 0
    rope_scaling_factor: float = 0.0
    use_logn_attn: bool = False
    download_dir: str | None = None
    revision: str | None = None
    max_prefill_token_num: int = 8192
    num_tokens_per_iter: int = 0
    max_prefill_iters: int = 1

    def __post_init__(self) -> None:
        _check_common(self)
        if self.cache_block_seq_len < 1:
            raise InvalidConfig(
                "cache_block_seq_len", f"must be >= 1, got {self.cache_block_seq_len}"
            )
        if self.num_tokens_per_iter < 0:
            raise InvalidConfig(
                "num_tokens_per_iter", f"must be >= 0 (0: auto), got {self.num_tokens_per_iter}"
            )
        if self.rope_scaling_factor != 0 and not self.rope_scaling_factor >= 1.0:
            raise InvalidConfig(
                "rope_scaling_factor",
                f"must be 0 (off) or >= 1.0 (dynamic NTK), got {self.rope_scaling_factor}",
            )

    def to_pytorch(self) -> PytorchEngineConfig:
        """The PyTorch engine runs a TurboMind config when CUDA or TurboMind is missing.
        `rope_scaling_factor` turns on dynamic NTK rope with that factor, as transformers'
        `rope_scaling={"rope_type": "dynamic", "factor": f}` does."""
        _reject_unsupported(
            self,
            {
                "use_logn_attn": False,
            },
        )
        config = PytorchEngineConfig(
            dtype=self.dtype,
            tp=self.tp,
            session_len=self.session_len,
            max_batch_size=self.max_batch_size,
            cache_max_entry_count=self.cache_max_entry_count,
            block_size=self.cache_block_seq_len,
            max_prefill_token_num=self.max_prefill_token_num,
            download_dir=self.download_dir,
            revision=self.revision,
            enable_prefix_caching=self.enable_prefix_caching,
            quant_policy=self.quant_policy,
            model_format=self.model_format,
        )
        if self.rope_scaling_factor:
            config.rope_scaling = {
                "rope_type": "dynamic",
                "factor": float(self.rope_scaling_factor),
            }
        return config


@dataclass
class VisionConfig:
    """The vision encoder of a vision-language model. `max_batch_size`: images encoded in
    one pass of the vision tower, gathered across requests. `thread_safe` is accepted for
    0.6.5 compatibility: encoding always runs on its own thread here."""

    max_batch_size: int = 1
    thread_safe: bool = False

    def __post_init__(self) -> None:
        try:
            check_int("max_batch_size", self.max_batch_size, 1, 1024)
        except InvalidArgument as exc:
            raise InvalidConfig.of(exc) from None


@dataclass
class ChatTemplateConfig:
    model_name: str
    system: str | None = None
    meta_instruction: str | None = None
    eosys: str | None = None
    user: str | None = None
    eoh: str | None = None
    assistant: str | None = None
    eoa: str | None = None
    tool: str | None = None
    eotool: str | None = None
    separator: str | None = None
    capability: Literal["completion", "infilling", "chat", "python"] | None = None
    stop_words: list[str] | None = None

    @property
    def chat_template(self) -> Any:
        """The template object (`messages2prompt`, `get_prompt`, `stop_words`) this config
        describes; a name not registered gives a plain template from the fields, as in 0.6.5."""
        from .chat_templates import template_of  # the templates import this module

        return template_of(self)

    @classmethod
    def from_json(cls, file_or_string: str) -> ChatTemplateConfig:
        """A config from a JSON file (or JSON text) holding `model_name` and any fields."""
        import json
        import os
        import uuid

        text = file_or_string
        if os.path.isfile(file_or_string):
            with open(file_or_string, encoding="utf-8") as f:
                text = f.read()
        elif not file_or_string.lstrip().startswith("{"):
            raise FileNotFoundError(f"chat template file {file_or_string!r} does not exist")
        data = json.loads(text)
        data.setdefault("model_name", uuid.uuid4().hex)  # 0.6.5 names a nameless template so
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown chat template fields {sorted(unknown)}; "
                f"use {[f.name for f in fields(cls)]}"
            )
        return cls(**data)


@dataclass
class Response:
    """One prompt's result, as `pipe()` returns it and `stream_infer()` yields it."""

    text: str
    generate_token_len: int
    input_token_len: int
    # 'error': the engine failed while computing it (the error is logged); retry the prompt.
    finish_reason: Literal["stop", "length", "abort", "error"] | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] | None = None
    logits: Any = None
    last_hidden_state: Any = None
    index: int = 0
    session_id: int | None = None
