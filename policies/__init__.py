"""Policies, registered by a lowercase, unique name.

A scenario names one (`policy: {name: fedavg}`) or a user file
(`policy: {name: path/to/mine.py:MyPolicy}`).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = ("policies.caff", "policies.fedavg", "policies.feddropout",
                    "policies.fedrolex", "policies.heterofl", "policies.layer_freezing",
                    "policies.lora", "policies.slt", "policies.small_model")


def register(cls: type) -> type:
    """Class decorator: add a policy under its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"policy {cls.__name__} needs a lowercase `name`, got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"policy name {name!r} is already registered")
    _REGISTRY[name] = cls
    return cls


def registered() -> dict[str, type]:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    return dict(sorted(_REGISTRY.items()))


def create_policy(name: str, params: dict[str, Any]) -> Any:
    """Instantiate a registered policy or `file.py:Class`; raises LookupError if unknown."""
    if ":" in name:
        return _load_user_policy(name)(**params)
    policies = registered()
    if name not in policies:
        raise LookupError(f"unknown policy {name!r}; registered: {', '.join(policies)}")
    return policies[name](**params)


def _load_user_policy(spec: str) -> type:
    file, _, class_name = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise LookupError(f"policy file {file!r} not found")
    module_spec = importlib.util.spec_from_file_location(f"user_policy_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # so that checkpoints can pickle its policy
    module_spec.loader.exec_module(module)
    if not hasattr(module, class_name):
        raise LookupError(f"{file} has no class {class_name!r}")
    return getattr(module, class_name)
