"""The run's output files: rounds.jsonl, devices.jsonl, summary.json, scenario.yaml.

Append-only JSON lines, flushed after every round, so a killed run keeps every round
it finished. Only the engine writes; the dashboard, reports and comparisons read
(`load_run`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetsim.types import DeviceRecord, RoundRecord


class RunWriter:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self._rounds = (out_dir / "rounds.jsonl").open("a")
        self._devices = (out_dir / "devices.jsonl").open("a")

    def write_round(self, record: RoundRecord, devices: Iterable[DeviceRecord]) -> None:
        """The round's device lines in one write, then its round line: a round in
        rounds.jsonl always has all its devices on disk."""
        self._devices.write("".join(_line(dataclasses.asdict(d)) for d in devices))
        self._devices.flush()
        self._rounds.write(_line(dataclasses.asdict(record)))
        self._rounds.flush()

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.out_dir / name, text)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        self._rounds.close()
        self._devices.close()


def write_atomic(path: Path, text: str) -> None:
    """Write text through a temporary file and rename: readers never see half a file."""
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` a temporary file, flush it to disk, then rename it over `path`: a
    kill at any moment leaves either the old file or the new one, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete record; a last line cut short by a kill is dropped."""
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()
    return [json.loads(line) for line in lines if line.strip()]


@dataclass(frozen=True)
class RunData:
    label: str
    rounds: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    summary: dict[str, Any]  # empty for a run that did not finish

    @property
    def classes(self) -> list[str]:
        return sorted({d["device_class"] for d in self.devices})

    def of_class(self, name: str) -> list[dict[str, Any]]:
        return [d for d in self.devices if d["device_class"] == name]


def load_run(run_dir: Path, label: str | None = None) -> RunData:
    """A run's records; raises FileNotFoundError if `run_dir` holds no run."""
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return RunData(label or summary.get("policy") or run_dir.name,
                   read_jsonl(run_dir / "rounds.jsonl"), read_jsonl(run_dir / "devices.jsonl"),
                   summary)
