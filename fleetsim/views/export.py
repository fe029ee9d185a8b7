"""Exports of a run's records: CSV next to the JSON-lines files, and an optional
TensorBoard event stream (`output.tensorboard: true`; needs the `tensorboard` package).
Both only read what the engine recorded."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from fleetsim.types import DeviceRecord, RoundRecord
from fleetsim.views.metrics import read_jsonl


def export_csv(out_dir: Path) -> list[Path]:
    """rounds.csv and devices.csv from the JSON-lines files (nested values as JSON)."""
    written = []
    for name in ("rounds", "devices"):
        rows = read_jsonl(out_dir / f"{name}.jsonl")
        path = out_dir / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows({k: json.dumps(v) if isinstance(v, dict | list) else v
                              for k, v in row.items()} for row in rows)
        written.append(path)
    return written


class TensorBoardObserver:
    """Writes each round's accuracy, losses, participation and bytes as scalars, with
    the simulated time as the wall time of the event, under `out_dir/tensorboard`."""

    def __init__(self, out_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))

    def on_pretrain(self, step: int, total: int, loss: float) -> None:
        pass

    def on_start(self, info: dict[str, Any]) -> None:
        self.writer.add_text("run", json.dumps(info, default=str))

    def on_round(self, record: RoundRecord, devices: list[DeviceRecord]) -> None:
        scalars = {"accuracy": record.accuracy, "loss": record.loss,
                   "train_loss": record.train_loss, "completed": record.completed,
                   "online": record.online, "stragglers": record.stragglers,
                   "offline": record.offline, "oom": record.oom, "failed": record.failed,
                   "mb_up": record.bytes_up / 1e6, "mb_down": record.bytes_down / 1e6}
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"round/{tag}", value, record.round,
                                       walltime=record.sim_time_s)
        self.writer.flush()

    def on_finish(self, summary: dict[str, Any]) -> None:
        self.writer.close()
