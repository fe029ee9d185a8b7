"""Reading strict config files: YAML in, validated pydantic models out, and every error
as one line naming the file and the key path (with a suggestion for a misspelt key)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fleetsim.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A config node: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)



def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(path, "", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(path, "", f"not UTF-8 text (byte {err.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(path, "", f"invalid YAML at {_yaml_problem(err, text)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "the top level must be a mapping of keys")
    return raw


def parse_model(model: type[M], raw: Any, path: Path, prefix: str = "") -> M:
    """Validate `raw` against `model`; the first error becomes a ConfigError."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        errors = err.errors()
        # A misspelt key also makes its correct name "missing": report the misspelling.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(first["loc"])
        key = _format_loc(loc)
        if prefix:
            key = f"{prefix}.{key}" if key else prefix
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key" + suggest(str(loc[-1]), _fields_at(model, loc[:-1]))
        elif first["type"] == "missing":
            message = "required key is missing"
        raise ConfigError(path, key, message) from None


def set_key_path(raw: dict[str, Any], key_path: str, value: Any, path: Path) -> None:
    """Apply one `--set a.b.c=value` override to the raw tree."""
    node: Any = raw
    parts = key_path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(path, key_path, "--set goes through a key that is not a mapping")
    node[parts[-1]] = value


def _yaml_problem(err: yaml.YAMLError, text: str) -> str:
    """One line: what is wrong and on which line."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    else:  # a ReaderError knows only a character position
        line = text[: getattr(err, "position", 0)].count("\n") + 1
    problem = getattr(err, "problem", None) or getattr(err, "reason", None) or str(err)
    return f"line {line}: {' '.join(str(problem).split())}"


# Pydantic puts union members and validator kinds in error locations; they are not keys.
_NOT_KEYS = {"int", "float", "str", "bool", "none", "dict", "list", "constrained-int",
             "constrained-float"}


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _NOT_KEYS or str(part).startswith("function-") or "[" in str(part):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The key names allowed at `loc` inside `model` (aliases included)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if not _is_model(current):
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def _inner_model(annotation: Any) -> Any:
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
