"""Policies, registered by a lowercase, unique name.

A scenario names one (`policy: {name: fedavg}`) or a user file
(`policy: {name: path/to/mine.py:MyPolicy}`). `policy_class` finds either and refuses,
in one line, a file that does not import, a missing class, or a class without the
methods a policy needs; `policy_params` checks the parameters against the class's
`Params` (docs/policies.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = ("policies.caff", "policies.fedavg", "policies.feddropout",
                    "policies.fedrolex", "policies.heterofl", "policies.layer_freezing",
                    "policies.lora", "policies.slt", "policies.small_model")
REQUIRED = ("setup", "plan_round", "aggregate")  # fleetsim.policy.Policy has them all


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


def policy_class(name: str) -> type:
    """A registered policy's class or `file.py:Class`'s, checked to have every method a
    policy needs; LookupError (one line) says what is wrong."""
    if ":" in name:
        return _user_class(name)
    policies = registered()
    if name not in policies:
        raise LookupError(f"unknown policy {name!r}; registered: {', '.join(policies)}")
    return policies[name]


def policy_params(cls: type, raw: Mapping[str, Any]) -> Any:
    """The parameters `cls` is built with: its `Params` validated from `raw` (pydantic's
    ValidationError, a ValueError, on a bad key or value), or, for a class without
    `Params`, `raw` itself once it binds to the constructor (TypeError otherwise)."""
    params = getattr(cls, "Params", None)
    if params is not None:
        return params.model_validate(dict(raw))
    inspect.signature(cls).bind(**raw)
    return dict(raw)


def create_policy(name: str, raw_params: Mapping[str, Any]) -> Any:
    """Instantiate a policy by name with raw parameters (see `policy_params`)."""
    cls = policy_class(name)
    params = policy_params(cls, raw_params)
    return cls(params) if hasattr(cls, "Params") else cls(**params)


def _user_class(spec: str) -> type:
    file, _, class_name = spec.rpartition(":")
    path = Path(file).resolve()
    if not path.is_file():
        raise LookupError(f"policy file {file} not found")
    module = _import_file(path, file)
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        found = sorted(n for n, v in vars(module).items()
                       if isinstance(v, type) and v.__module__ == module.__name__)
        raise LookupError(f"{file} has no class {class_name!r} (it defines: "
                          f"{', '.join(found) or 'no classes'})")
    missing = [m for m in REQUIRED if not callable(getattr(cls, m, None))]
    if missing:
        raise LookupError(f"{file}: class {class_name} lacks {', '.join(missing)} (subclass "
                          "fleetsim.policy.Policy to get setup and aggregate)")
    return cls


def _import_file(path: Path, shown: str) -> Any:
    """The user module at `path`, imported once per process; any error while importing
    it becomes one line."""
    name = f"user_policy_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as err:
        raise LookupError(f"{shown}: cannot import: syntax error at line {err.lineno}: "
                          f"{err.msg}") from None
    except Exception as err:  # noqa: BLE001 - any error in user code, said in one line
        raise LookupError(f"{shown}: cannot import: {type(err).__name__}: "
                          f"{' '.join(str(err).split())}") from None
    sys.modules[name] = module
    return module
