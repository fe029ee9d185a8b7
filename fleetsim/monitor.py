"""Watching a run: a rich live view in a terminal, plain lines elsewhere.

Observers only read what the engine reports. The view is built by a pure function
(`render`) from a `RunView`, so tests render it into a capture console.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleetsim.types import DeviceRecord, RoundRecord


@dataclass
class RunView:
    """Everything the live view shows, accumulated from the engine's reports."""

    info: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    pretrain: tuple[int, int, float] | None = None
    wall_start: float = field(default_factory=time.perf_counter)


def render(view: RunView, last: int = 8) -> Group:
    """The live view as a rich renderable."""
    info, total = view.info, view.info.get("rounds", 0)
    done = len(view.rounds)
    head = Text.assemble(
        (f"{info.get('scenario', '?')}", "bold"), f"  policy {info.get('policy', '?')}",
        f"  model {info.get('model', '?')}  devices {info.get('devices', '?')}",
        f"  hosts {info.get('hosts', '?')}")
    parts: list[Any] = [head]
    if view.pretrain and not view.rounds:
        step, steps, loss = view.pretrain
        parts.append(Text(f"pretraining {step}/{steps}  loss {loss:.3f}"))
    sim = view.rounds[-1].sim_time_s if view.rounds else 0.0
    wall = time.perf_counter() - view.wall_start
    parts.append(Text(f"round {done}/{total}  simulated {sim:,.0f} s  wall {wall:,.0f} s  "
                      f"accuracy {_accuracy(view)}"))
    parts.append(ProgressBar(total=max(total, 1), completed=done, width=60))
    parts.append(_round_table(view.rounds[-last:]))
    return Group(*parts)


def _accuracy(view: RunView) -> str:
    evaluated = [r.accuracy for r in view.rounds if r.accuracy is not None]
    if evaluated:
        return f"{evaluated[-1]:.4f}"
    initial = view.info.get("initial_accuracy")
    return f"{initial:.4f} (pretrained)" if initial is not None else "-"


def _round_table(rounds: Sequence[RoundRecord]) -> Table:
    table = Table("round", "sim s", "sel", "ok", "strag", "oom", "fail", "skip", "MB up",
                  "train loss", "accuracy", box=None, pad_edge=False)
    for r in rounds:
        table.add_row(str(r.round), f"{r.sim_time_s:,.0f}", str(r.selected), str(r.completed),
                      str(r.stragglers), str(r.oom), str(r.failed), str(r.skipped),
                      f"{r.bytes_up / 1e6:.1f}", _fmt(r.train_loss), _fmt(r.accuracy))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def round_line(r: RoundRecord) -> str:
    """One plain log line per round."""
    return (f"round {r.round}: sim {r.sim_time_s:.1f}s selected {r.selected} ok {r.completed} "
            f"stragglers {r.stragglers} oom {r.oom} failed {r.failed} skipped {r.skipped} "
            f"up {r.bytes_up / 1e6:.2f}MB train_loss {_fmt(r.train_loss)} "
            f"accuracy {_fmt(r.accuracy)} wall {r.wall_time_s:.2f}s")


class PlainObserver:
    def __init__(self, out_dir: Path, stream: Any = None) -> None:
        self.out_dir, self.stream = out_dir, stream or sys.stdout
        self._last_pretrain_print = 0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_pretrain(self, step: int, total: int, loss: float) -> None:
        if step == total or step - self._last_pretrain_print >= max(total // 10, 1):
            self._last_pretrain_print = step
            self._print(f"pretraining step {step}/{total} loss {loss:.3f}")

    def on_start(self, info: dict[str, Any]) -> None:
        self._print(f"run {info['scenario']}: policy {info['policy']} model {info['model']} "
                    f"devices {info['devices']} hosts {info['hosts']} -> {self.out_dir}; "
                    f"pretrained accuracy {_fmt(info['initial_accuracy'])}"
                    + (f"; resumed after round {info['resumed_after_round']}"
                       if info.get("resumed_after_round") is not None else ""))

    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        self._print(round_line(record))

    def on_finish(self, summary: dict[str, Any]) -> None:
        self._print(f"done: accuracy {_fmt(summary['initial_accuracy'])} -> "
                    f"{_fmt(summary['final_accuracy'])} in {summary['sim_time_s']:.0f} simulated s,"
                    f" {summary['wall_time_s']:.1f} wall s; results in {self.out_dir}")


class LiveObserver(PlainObserver):
    """The rich live view; refreshes at a bounded rate (4 Hz)."""

    def __init__(self, out_dir: Path, live: Live) -> None:
        super().__init__(out_dir, live.console.file)
        self.view, self.live = RunView(), live

    def _refresh(self) -> None:
        self.live.update(render(self.view))

    def on_pretrain(self, step: int, total: int, loss: float) -> None:
        self.view.pretrain = (step, total, loss)
        self._refresh()

    def on_start(self, info: dict[str, Any]) -> None:
        self.view.info = info
        self._refresh()

    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        self.view.rounds.append(record)
        self._refresh()

    def on_finish(self, summary: dict[str, Any]) -> None:
        self._refresh()
        self.live.stop()
        super().on_finish(summary)


@contextmanager
def make_observer(live: bool, out_dir: Path) -> Iterator[PlainObserver]:
    if not live:
        yield PlainObserver(out_dir)
        return
    with Live(render(RunView()), console=Console(), refresh_per_second=4) as display:
        yield LiveObserver(out_dir, display)
