"""The run's output files: rounds.jsonl, devices.jsonl, summary.json, scenario.yaml.

Append-only JSON lines, flushed after every round, so a killed run keeps every round
it finished. Only the engine writes; the dashboard and reports read.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
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
    """Write through a temporary file and rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
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
