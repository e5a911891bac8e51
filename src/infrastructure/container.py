"""The one place that chooses and wires adapters: config -> loader -> tokenizer -> runner ->
engine -> services. Entry points build a container and ask it for what they serve."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dependency_injector import containers, providers

from ..adapters.engines.pytorch import builder
from ..adapters.engines.pytorch.runner.step_extras import join_rows
from ..adapters.grammar.xgrammar_backend import XGrammarBackend
from ..adapters.http import proxy_upstream
from ..adapters.http.proxy_app import ProxyServices
from ..adapters.ipc.wire import ModelFacts
from ..adapters.loaders import model_source
from ..adapters.loaders.checkpoint import open_checkpoint
from ..adapters.tokenizers.hf_tokenizer import HFTokenizer
from ..adapters.tokenizers.id_tokenizer import IdTokenizer
from ..adapters.vision.image_loader import PILImageLoader
from ..adapters.vision.registry import vision_encoder
from ..application.chat_template import ModelChatTemplate, best_match_model, builtin_template
from ..application.configs import (
    ChatTemplateConfig,
    PytorchEngineConfig,
    TurbomindEngineConfig,
    VisionConfig,
)
from ..application.engine import EngineLoop
from ..application.generation import GenerationService
from ..application.proxy import Dispatcher, Forwarder, HealthMonitor, NodeTable
from ..application.vision import VisionService
from ..domain.block_allocator import BlockAllocator
from ..domain.errors import InvalidArgument
from ..domain.host_blocks import HostBlockAllocator
from ..domain.scheduler import Scheduler, SchedulerConfig
from .devices import platform_for

logger = logging.getLogger("lmdeploy.container")


def engine_config(
    backend: str | None, backend_config: PytorchEngineConfig | TurbomindEngineConfig | None
) -> PytorchEngineConfig:
    """The documented backend choice; this build runs everything on the PyTorch engine."""
    if backend not in (None, "pytorch", "turbomind"):
        raise ValueError(f"backend must be 'pytorch' or 'turbomind', got {backend!r}")
    if isinstance(backend_config, TurbomindEngineConfig) or backend == "turbomind":
        logger.warning(
            "the TurboMind engine is not available here (it needs CUDA and its library); "
            "using the PyTorch engine"
        )
        return (
            backend_config.to_pytorch()
            if isinstance(backend_config, TurbomindEngineConfig)
            else PytorchEngineConfig()
        )
    return backend_config or PytorchEngineConfig()


def _model_facts(built: builder.BuiltModel) -> ModelFacts:
    c = built.config
    return ModelFacts(c.vocab_size, frozenset(c.eos_token_ids), c.max_position_embeddings)


def _session_len(config: PytorchEngineConfig, facts: ModelFacts) -> int:
    return config.session_len or facts.max_position_embeddings


def _max_batch_size(config: PytorchEngineConfig, built: builder.BuiltModel) -> int:
    return built.runner.max_batch_size


# Tokens of growth kept free for each running sequence when a prompt is admitted (see
# SchedulerConfig): 16 removed ~99% of the preemptions of the 1000-request log-normal workload
# on 512-1927 blocks in `benchmark/scheduler_sim.py` (485 -> 4 with 512). Overridable for A/B runs.
ADMISSION_HEADROOM_TOKENS = 16


def _admission_headroom() -> int:
    value = os.environ.get("LMDEPLOY_ADMISSION_HEADROOM", str(ADMISSION_HEADROOM_TOKENS))
    try:
        return max(0, int(value))
    except ValueError:
        raise InvalidArgument(
            "LMDEPLOY_ADMISSION_HEADROOM", f"expected a number of tokens, got {value!r}"
        ) from None


def _scheduler(config: PytorchEngineConfig, built: builder.BuiltModel) -> Scheduler:
    cache = built.runner.cache
    return Scheduler(
        SchedulerConfig(
            max_batch_size=_max_batch_size(config, built),
            max_num_batched_tokens=config.max_prefill_token_num,
            max_model_len=_session_len(config, _model_facts(built)),
            forecast_decodes=built.runner.decodes_ahead,
            max_adapters=built.runner.lora.num_slots if built.runner.lora else 0,
            prefill_interval=config.prefill_interval,
            admission_headroom=_admission_headroom(),
        ),
        BlockAllocator(cache.num_blocks, cache.block_size, config.enable_prefix_caching),
        HostBlockAllocator(cache.num_cpu_blocks) if cache.num_cpu_blocks else None,
    )


def _tokenizer(source: model_source.ModelSource, facts: ModelFacts) -> HFTokenizer | IdTokenizer:
    tokenizer_source = source
    if source.path is None:  # dummy weights of a shipped shape: borrow the default vocabulary
        try:
            tokenizer_source = model_source.resolve(None)
        except model_source.ModelNotFound:
            logger.warning("no tokenizer for %s: prompts must be token ids", source.name)
            return IdTokenizer(facts.vocab_size, facts.eos_token_ids)
    elif source.kind == "dummy" and not _has_tokenizer_files(source.directory):
        # random weights of a config.json alone (a benchmark's shape): token ids only
        logger.warning("no tokenizer files in %s: prompts must be token ids", source.directory)
        return IdTokenizer(facts.vocab_size, facts.eos_token_ids)
    return HFTokenizer.from_source(tokenizer_source, facts.eos_token_ids)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _has_tokenizer_files(directory: Path | None) -> bool:
    return directory is not None and any((directory / f).exists() for f in _TOKENIZER_FILES)


def _grammar(tokenizer: HFTokenizer | IdTokenizer, facts: ModelFacts):
    """Constrained decoding compiles against the vocabulary's text: token-id-only models have none."""
    if not isinstance(tokenizer, HFTokenizer):
        return None
    return XGrammarBackend(tokenizer.hf_tokenizer, facts.vocab_size)


def _chat_template(
    tokenizer: HFTokenizer,
    config: ChatTemplateConfig | None,
    source: model_source.ModelSource | None = None,
):
    """The configured template; else the built-in matching the model's name; else the
    model's own jinja template; else `base`. Dummy weights borrow the default vocabulary,
    so their shape's name says nothing of the prompt format."""
    if config is not None:
        return builtin_template(config)
    matched = best_match_model(source.name) if source and source.kind != "dummy" else None
    if matched not in (None, "base"):  # 'base' is 0.6.5's answer for "no template matches"
        return builtin_template(ChatTemplateConfig(model_name=matched))
    if tokenizer.has_chat_template:
        return ModelChatTemplate(tokenizer)
    return builtin_template(ChatTemplateConfig(model_name="base"))


def _vision(
    source: model_source.ModelSource,
    built: builder.BuiltModel,
    config: VisionConfig | None,
):
    """A vision-language model's image side, its worker thread running; None yields for a
    text-only model (GenerationService then refuses images)."""
    if source.kind == "gguf" or source.path is None:
        yield None
        return
    hf_config, weights = open_checkpoint(source)
    encoder = vision_encoder(
        source.directory, hf_config, weights, built.runner.device, built.runner.dtype
    )
    if encoder is None:
        yield None
        return
    service = VisionService(encoder, PILImageLoader(), (config or VisionConfig()).max_batch_size)
    service.start()
    yield service
    service.stop()


def _engine_loop(runner, scheduler, platform) -> EngineLoop:
    engine = EngineLoop(runner, scheduler)
    engine.start()
    # A tensor-parallel runner reports a rank that dies while no step runs.
    on_failure = getattr(runner, "on_failure", None)
    if on_failure is not None:
        on_failure(engine.fail)
    yield engine
    engine.stop()
    # After the loop: the runner stops its tensor-parallel workers and lets go of its weights,
    # cache and graphs. Tests may wrap the runner in a fake without `close`.
    close = getattr(runner, "close", None)
    if close is not None:
        close()
        platform.release_cached_memory()  # what the runner let go of, back to the device


class Container(containers.DeclarativeContainer):
    config = providers.Configuration()

    engine_config = providers.Singleton(engine_config, config.backend, config.backend_config)
    # Tests run the engine through another platform (a stand-in NPU on the CPU) by override.
    platform = providers.Singleton(platform_for, engine_config)
    # The platform is an argument of the source so that, whichever provider resources resolve
    # first, the device is checked before the model is looked up or fetched.
    source = providers.Singleton(
        lambda path, cfg, _platform: model_source.resolve(
            path, cfg.load_format, cfg.download_dir, cfg.revision
        ),
        config.model_path,
        engine_config,
        platform,
    )
    built_model = providers.Singleton(
        builder.build, platform=platform, source=source, config=engine_config
    )
    # What the front needs of the model; an api_server whose engine runs in its own process
    # overrides it (and `engine`) with what that process reports, and loads no weights itself.
    model_facts = providers.Singleton(_model_facts, built_model)
    tokenizer = providers.Singleton(_tokenizer, source, model_facts)
    chat_template = providers.Singleton(
        _chat_template, tokenizer, config.chat_template_config, source
    )
    scheduler = providers.Singleton(_scheduler, engine_config, built_model)
    # Its own provider so that tests can wrap the real runner (e.g. to inject a failing step).
    runner = providers.Callable(lambda b: b.runner, built_model)
    engine = providers.Resource(_engine_loop, runner, scheduler, platform)
    vision = providers.Resource(_vision, source, built_model, config.vision_config)
    session_len = providers.Callable(_session_len, engine_config, model_facts)
    grammar = providers.Singleton(_grammar, tokenizer, model_facts)
    generation = providers.Singleton(
        GenerationService,
        engine,
        tokenizer,
        chat_template,
        session_len,
        join_rows,
        grammar,
        config.max_log_len,
        providers.Callable(lambda facts: facts.vocab_size, model_facts),
        vision,
        providers.Callable(lambda cfg: tuple(cfg.adapters or ()), engine_config),
    )
    # As 0.6.5: the model_path as given; the embedded default (no path) keeps its short name.
    model_name = providers.Callable(
        lambda name, path, src: name or path or src.name,
        config.model_name,
        config.model_path,
        source,
    )


def _proxy_services(table, forwarder, monitor, client, api_keys) -> ProxyServices:
    return ProxyServices(table, forwarder, monitor, tuple(api_keys or ()), client.aclose)


class ProxyContainer(containers.DeclarativeContainer):
    """The proxy: a node table, the dispatch strategy, one pooled httpx client to the nodes."""

    config = providers.Configuration()

    table = providers.Singleton(NodeTable)
    dispatcher = providers.Singleton(Dispatcher, table, config.strategy)
    client = providers.Singleton(proxy_upstream.make_client)
    upstream = providers.Singleton(
        proxy_upstream.HttpxUpstream,
        client,
        config.node_api_key,
        providers.Callable(lambda keys: keys[0] if keys else None, config.api_keys),
    )
    forwarder = providers.Singleton(Forwarder, dispatcher, upstream)
    monitor = providers.Singleton(HealthMonitor, table, upstream, config.health_interval)
    services = providers.Singleton(
        _proxy_services, table, forwarder, monitor, client, config.api_keys
    )
