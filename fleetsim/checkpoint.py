"""Checkpoints: after every round, all a run needs to go on as if never stopped.

The global state goes to a safetensors file; the rest (the policy object, the clock's
time, the fleet's generators and dynamic state, the lengths of the output files) to a
pickle; the round records are the lines of rounds.jsonl up to that length. Both are
written under the round's name through a temporary file and a rename, then
`latest.json` (also renamed into place) points at them, and older files go. A kill
at any moment leaves the previous checkpoint whole.
Every other random stream of a run is a pure function of (seed, round, ...), so these
are all the generators there are.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fleetsim.metrics import replace_atomically, write_atomic
from fleetsim.types import ModelState

OUTPUTS = ("rounds.jsonl", "devices.jsonl")


@dataclass
class Checkpoint:
    round: int  # the last round completed
    state: ModelState
    policy: Any
    clock_s: float
    fleet: Any  # Fleet.snapshot()
    initial: Any  # the evaluation before the first round
    offsets: dict[str, int]  # bytes of each output file when the round was done


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> None:
    folder = out_dir / "checkpoint"
    folder.mkdir(exist_ok=True)
    state_file, run_file = f"state-{ckpt.round}.safetensors", f"run-{ckpt.round}.pkl"
    arrays = {k: np.ascontiguousarray(v) for k, v in ckpt.state.items()}
    replace_atomically(folder / state_file, lambda tmp: save_file(arrays, str(tmp)))
    rest = {k: v for k, v in vars(ckpt).items() if k != "state"}
    replace_atomically(folder / run_file, lambda tmp: tmp.write_bytes(pickle.dumps(rest)))
    write_atomic(folder / "latest.json", json.dumps(
        {"round": ckpt.round, "state": state_file, "run": run_file}) + "\n")
    for old in folder.iterdir():
        if old.name not in (state_file, run_file, "latest.json"):
            old.unlink()


def load_checkpoint(out_dir: Path) -> Checkpoint | None:
    """The latest checkpoint in a run directory, or None if there is none."""
    folder = out_dir / "checkpoint"
    if not (folder / "latest.json").is_file():
        return None
    latest = json.loads((folder / "latest.json").read_text())
    rest = pickle.loads((folder / latest["run"]).read_bytes())
    return Checkpoint(state=load_file(str(folder / latest["state"])), **rest)


def output_offsets(out_dir: Path) -> dict[str, int]:
    return {name: (out_dir / name).stat().st_size for name in OUTPUTS}


def truncate_outputs(out_dir: Path, offsets: dict[str, int]) -> None:
    """Drop what was written after the checkpoint (a round that was cut short)."""
    for name, size in offsets.items():
        with (out_dir / name).open("r+b") as handle:
            handle.truncate(size)

