"""`PytorchEngineConfig.custom_module_map`: a user's model classes, which add architectures
to the registry or replace its entries for one engine, read as LMDeploy 0.6.5 reads them.

The documented form is the path of a Python file that defines `MODULE_MAP` and/or
`CUSTOM_MODULE_MAP`: dicts of HF architecture name -> a class, the name of a class defined
in that file, or a dotted `package.module.Class` to import. The file's folder joins
`sys.path` (as in 0.6.5), so it may import modules beside it. A dict passed directly maps
architectures the same way (classes or dotted names). Each class must subclass `CausalLM`.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .....domain.errors import InvalidArgument
from .base import CausalLM

ARGUMENT = "custom_module_map"
_MAP_NAMES = ("MODULE_MAP", "CUSTOM_MODULE_MAP")
_module_ids = itertools.count()


def _error(message: str) -> InvalidArgument:
    return InvalidArgument(ARGUMENT, message)


def _exec_file(path: Path) -> ModuleType:
    if not path.is_file() or path.suffix != ".py":
        raise _error(
            f"{str(path)!r} is not a Python file; pass the path of a .py file that "
            f"defines MODULE_MAP = {{'<architecture>': '<class name>'}}"
        )
    name = f"_lmdeploy_custom_module_map_{next(_module_ids)}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, "a .py file always has a loader"
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _error(f"{path} failed to run: {type(exc).__name__}: {exc}") from exc
    return module


def _import_dotted(qualname: str) -> Any:
    module_name, _, attr = qualname.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise _error(f"cannot import {qualname!r}: {exc}") from exc


def _resolve(arch: str, value: Any, module: ModuleType | None) -> type[CausalLM]:
    if isinstance(value, str) and "." not in value:
        if module is None or not hasattr(module, value):
            where = "the file" if module is not None else "a dict (use 'package.module.Class')"
            raise _error(f"{arch!r} maps to {value!r}, which {where} does not define")
        value = getattr(module, value)
    elif isinstance(value, str):
        value = _import_dotted(value)
    if not (isinstance(value, type) and issubclass(value, CausalLM)):
        raise _error(
            f"{arch!r} maps to {value!r}, which is not a model class: it must subclass "
            f"{CausalLM.__module__}.CausalLM (e.g. the LlamaForCausalLM of models/llama.py)"
        )
    return value


def load_custom_module_map(
    spec: str | os.PathLike | dict[str, Any] | None,
) -> dict[str, type[CausalLM]]:
    """Architecture -> model class of the user's map; empty without one."""
    if spec is None:
        return {}
    module = None
    if isinstance(spec, dict):
        entries = spec
    else:
        module = _exec_file(Path(spec).expanduser().resolve())
        maps = [getattr(module, name) for name in _MAP_NAMES if hasattr(module, name)]
        if not maps or not all(isinstance(m, dict) for m in maps):
            raise _error(
                f"{spec} must define MODULE_MAP or CUSTOM_MODULE_MAP as a dict of "
                f"architecture name -> model class (or its name)"
            )
        entries = {k: v for m in maps for k, v in m.items()}
    return {arch: _resolve(arch, value, module) for arch, value in entries.items()}
