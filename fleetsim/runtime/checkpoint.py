"""Checkpoints: after every round, all a run needs to go on as if never stopped, as data
and never code, so resuming a run directory from someone else runs nothing it holds.

A checkpoint is two files named after its round: `round-<r>.safetensors` (the global
state, every array of the fleet's state under `~fleet/...` and, in asynchronous mode,
the older versions jobs in flight start from under `~versions/...`) and `round-<r>.json`
(the round, the clock's time, the evaluation before the first round, the lengths of the
output files, the fleet's state with its arrays replaced by references, the policy's
`state_dict()` if it has one, and the SHA-256 of both the tensor file and its own body).
Files are written through a temporary file and a rename, tensors first; the last two
checkpoints are kept. `load_checkpoint` takes the newest intact one: a checkpoint cut
short or damaged fails its checksums and the one before it is used.
Every other random stream of a run is a pure function of (seed, round, ...), so the
fleet's generators are all the generators there are.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from fleetsim.errors import ConfigError
from fleetsim.types import ModelState
from fleetsim.views.metrics import replace_atomically, write_atomic

OUTPUTS = ("rounds.jsonl", "devices.jsonl")
FOLDER = "checkpoint"
KEEP = 2  # checkpoints kept: the newest, and the one to fall back on
FORMAT = 2  # 1 was a pickle, which is never loaded
FLEET_PREFIX = "~fleet/"  # tensor names of the fleet's arrays (a model's never start so)
VERSIONS_PREFIX = "~versions/"  # and of an asynchronous run's older versions
NAME = re.compile(r"round-(\d+)\.json")


@dataclass(frozen=True)
class Checkpoint:
    round: int  # the last round completed
    state: ModelState
    policy: dict[str, Any] | None  # the policy's state_dict(), None for a stateless one
    clock_s: float
    fleet: Any  # Fleet.snapshot(): plain values and numpy arrays
    initial: dict[str, float | None]  # the evaluation before the first round
    offsets: dict[str, int]  # bytes of each output file when the round was done
    # an asynchronous run's older global versions its jobs in flight start from
    versions: Mapping[int, ModelState] | None = None


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> None:
    folder = out_dir / FOLDER
    folder.mkdir(exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    stored = {id(v): k for k, v in ckpt.state.items()}  # an array held twice is saved once
    fleet = to_plain(ckpt.fleet, FLEET_PREFIX, arrays, stored)
    versions = to_plain(ckpt.versions, VERSIONS_PREFIX, arrays, stored)
    tensors = {**{k: np.ascontiguousarray(v) for k, v in ckpt.state.items()}, **arrays}
    tensor_file, data = f"round-{ckpt.round}.safetensors", save(tensors)
    replace_atomically(folder / tensor_file, partial(Path.write_bytes, data=data))
    body = {"format": FORMAT, "round": ckpt.round, "clock_s": ckpt.clock_s,
            "initial": ckpt.initial, "offsets": ckpt.offsets, "fleet": fleet,
            "policy": ckpt.policy, "versions": versions, "tensors": tensor_file,
            "tensors_sha256": _sha256(data)}
    write_atomic(folder / f"round-{ckpt.round}.json",
                 json.dumps({**body, "sha256": _sha256(_canonical(body))}) + "\n")
    for old in _rounds(folder)[KEEP:]:
        for name in (f"round-{old}.json", f"round-{old}.safetensors"):
            (folder / name).unlink(missing_ok=True)
    for stale in ("latest.json", *(p.name for p in folder.glob("*.pkl"))):  # format 1
        (folder / stale).unlink(missing_ok=True)


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The newest intact checkpoint of a run directory; None if it has none at all.
    ConfigError (one line) when every checkpoint there is damaged or of the old format."""
    folder = out_dir / FOLDER
    rounds = _rounds(folder) if folder.is_dir() else []
    problems = []
    for r in rounds:
        try:
            return _load(folder, r)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            problems.append(f"round-{r}: {err}")
    if (folder / "latest.json").is_file():
        problems.append("an old checkpoint format (a pickle), which fleetsim never loads")
    if problems:
        raise ConfigError(folder, "checkpoint", "no intact checkpoint (" + "; ".join(problems)
                          + "): start the run again with fleetsim run")
    return None


def _load(folder: Path, r: int) -> Checkpoint:
    saved = json.loads((folder / f"round-{r}.json").read_text())
    digest = saved.pop("sha256", None)
    if saved.get("format") != FORMAT or digest != _sha256(_canonical(saved)):
        raise ValueError("its record fails its checksum")
    data = (folder / saved["tensors"]).read_bytes()
    if _sha256(data) != saved["tensors_sha256"]:
        raise ValueError(f"{saved['tensors']} fails its checksum")
    tensors = load(data)
    state = {k: v for k, v in tensors.items() if not k.startswith("~")}
    versions = from_plain(saved.get("versions"), tensors)
    return Checkpoint(saved["round"], state, saved["policy"], saved["clock_s"],
                      from_plain(saved["fleet"], tensors), saved["initial"], saved["offsets"],
                      None if versions is None else {int(v): s for v, s in versions.items()})


def to_plain(value: Any, path: str, arrays: dict[str, np.ndarray],
             stored: dict[int, str] | None = None) -> Any:
    """JSON-ready: numpy arrays moved into `arrays` (under their path) and referenced,
    tuples marked, numpy scalars as Python numbers. `stored`: the paths of arrays saved
    already, by identity (versions of a model share the tensors a step left alone)."""
    stored = {} if stored is None else stored
    if isinstance(value, np.ndarray):
        if id(value) not in stored:
            arrays[path] = np.ascontiguousarray(value)
            stored[id(value)] = path
        return {"~array": stored[id(value)]}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v, f"{path}{k}/", arrays, stored) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"~tuple": [to_plain(v, f"{path}{i}/", arrays, stored)
                           for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_plain(v, f"{path}{i}/", arrays, stored) for i, v in enumerate(value)]
    return value


def from_plain(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """`to_plain` undone."""
    if isinstance(value, dict):
        if set(value) == {"~array"}:
            return arrays[value["~array"]]
        if set(value) == {"~tuple"}:
            return tuple(from_plain(v, arrays) for v in value["~tuple"])
        return {k: from_plain(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [from_plain(v, arrays) for v in value]
    return value


def _rounds(folder: Path) -> list[int]:
    """The rounds checkpointed in `folder`, newest first."""
    found = (NAME.fullmatch(p.name) for p in folder.iterdir())
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_offsets(out_dir: Path) -> dict[str, int]:
    return {name: (out_dir / name).stat().st_size for name in OUTPUTS}


def truncate_outputs(out_dir: Path, offsets: dict[str, int]) -> None:
    """Drop what was written after the checkpoint (a round that was cut short)."""
    for name, size in offsets.items():
        with (out_dir / name).open("r+b") as handle:
            handle.truncate(size)
