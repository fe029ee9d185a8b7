"""Watching a run: the live dashboard in a terminal, plain lines elsewhere, and
TensorBoard when asked. Observers only read what the engine reports."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from fleetsim.types import DeviceRecord, RoundRecord, StepRecord
from fleetsim.views.dashboard import RunView, fmt, render, rounds_that_fit


def round_line(r: RoundRecord) -> str:
    """One plain log line per round (per server step in asynchronous mode, with the
    staleness of its updates and the jobs in flight)."""
    step = (f" stale {r.stale} staleness {fmt(r.staleness_mean, 1)}/{r.staleness_max or 0} "
            f"in flight {r.in_flight}" if isinstance(r, StepRecord) else "")
    return (f"{'step' if step else 'round'} {r.round}: sim {r.sim_time_s:.1f}s selected "
            f"{r.selected} ok {r.completed} stragglers {r.stragglers} oom {r.oom} failed "
            f"{r.failed} skipped {r.skipped}{step} up {r.bytes_up / 1e6:.2f}MB train_loss "
            f"{fmt(r.train_loss)} accuracy {fmt(r.accuracy)} wall {r.wall_time_s:.2f}s")


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
                    f"pretrained accuracy {fmt(info['initial_accuracy'])}"
                    + (f"; resumed after round {info['resumed_after_round']}"
                       if info.get("resumed_after_round") is not None else ""))

    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        self._print(round_line(record))

    def on_finish(self, summary: dict[str, Any]) -> None:
        self._print(f"done: accuracy {fmt(summary['initial_accuracy'])} -> "
                    f"{fmt(summary['final_accuracy'])} in {summary['sim_time_s']:.0f} simulated s,"
                    f" {summary['wall_time_s']:.1f} wall s; results in {self.out_dir}")


class LiveObserver(PlainObserver):
    """The live dashboard. It is drawn when something changed, at most once every
    MIN_REDRAW_S (a draw of a large view takes ~20 ms: about 1% of the time); always when
    the run starts (else a start right after pretraining would show pretraining until
    the first round ends) and when it ends. `clock`: the wall clock it reads, in seconds
    (tests pass their own)."""

    MIN_REDRAW_S = 2.0

    def __init__(self, out_dir: Path, live: Live,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(out_dir, live.console.file)
        self.view, self.live, self.clock = RunView(), live, clock
        self.drawn_at = -math.inf  # the first change is drawn whatever the clock reads

    def _refresh(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.drawn_at >= self.MIN_REDRAW_S:
            last = rounds_that_fit(self.view, self.live.console.size.height)
            self.live.update(render(self.view, last), refresh=True)
            self.drawn_at = now

    def on_pretrain(self, step: int, total: int, loss: float) -> None:
        self.view.pretrain = (step, total, loss)
        self._refresh()

    def on_start(self, info: dict[str, Any]) -> None:
        self.view.info = info
        self._refresh(force=True)

    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        self.view.add_round(record, devices)
        self._refresh()

    def on_finish(self, summary: dict[str, Any]) -> None:
        self._refresh(force=True)
        self.live.stop()
        super().on_finish(summary)


@contextmanager
def make_observer(view: str, out_dir: Path, tensorboard: bool = False) -> Iterator[Any]:
    """The run watched as `view` says: "live" (the dashboard), "bar" (a progress bar),
    "lines" (one plain line per round) or "none"; plus TensorBoard if asked."""
    extra = []
    if tensorboard:
        from fleetsim.views.export import TensorBoardObserver

        extra.append(TensorBoardObserver(out_dir))
    if view == "live":
        with Live(render(RunView()), console=Console(), auto_refresh=False) as display:
            yield FanOut([LiveObserver(out_dir, display), *extra])
    elif view == "bar":
        with ProgressBar(out_dir) as bar:
            yield FanOut([bar, *extra])
    else:
        yield FanOut([*([PlainObserver(out_dir)] if view == "lines" else []), *extra])


class ProgressBar(PlainObserver):
    """A progress bar over the rounds with the latest accuracy (where no terminal shows
    the dashboard: notebooks, logs of scripts); the final line as PlainObserver's."""

    def __init__(self, out_dir: Path) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        super().__init__(out_dir)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[status]}"))
        self.task = self.progress.add_task("starting", total=None, status="")

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_pretrain(self, step: int, total: int, loss: float) -> None:
        self.progress.update(self.task, description="pretraining", completed=step,
                             total=total, status=f"loss {loss:.3f}")

    def on_start(self, info: dict[str, Any]) -> None:
        done = info.get("resumed_after_round")
        self.progress.update(self.task, description=f"{info['scenario']} ({info['policy']})",
                             completed=0 if done is None else done + 1, total=info["rounds"],
                             status=f"accuracy {fmt(info['initial_accuracy'])}")

    def on_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        status = self.progress.tasks[0].fields["status"]
        if record.accuracy is not None:
            status = f"accuracy {fmt(record.accuracy)}"
        self.progress.update(self.task, completed=record.round + 1, status=status)

    def on_finish(self, summary: dict[str, Any]) -> None:
        self.progress.stop()
        super().on_finish(summary)


class FanOut:
    """Several observers as one."""

    def __init__(self, observers: list[Any]) -> None:
        self.observers = observers

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any) -> None:
            for observer in self.observers:
                getattr(observer, name)(*args)

        return call
