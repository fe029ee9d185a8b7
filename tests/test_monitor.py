"""The live view renders from data; plain lines say what happened."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.live import Live

from fleetsim.types import DeviceRecord, RoundRecord
from fleetsim.views.dashboard import RunView, render, rounds_that_fit, sparkline
from fleetsim.views.monitor import LiveObserver, PlainObserver, round_line


def record(r: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(round=r, sim_time_s=100.0 * (r + 1), round_time_s=100.0, wall_time_s=1.0,
                       accuracy=accuracy, loss=None, train_loss=1.5, selected=13, completed=10,
                       stragglers=3, offline=0, oom=1, failed=0, skipped=2, bytes_up=2_000_000,
                       bytes_down=4_000_000, aggregated=True, online=40 - 10 * (r == 3),
                       online_by_class={"phone_low": 25 - 10 * (r == 3), "rpi4": 15})


def text_of(view: RunView, width: int = 120, last: int = 8) -> str:
    """The dashboard as text, the panels' side frames taken off each line."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render(view, last))
    return "\n".join(line.strip("│ ") for line in console.file.getvalue().splitlines())


def test_view_shows_header_progress_and_last_rounds() -> None:
    view = RunView(info={"scenario": "demo", "policy": "fedavg", "model": "gpt-2x64",
                         "rounds": 20, "devices": 60, "hosts": 2})
    view.rounds = [record(r, 0.4 + r / 100 if r % 5 == 4 else None) for r in range(12)]
    text = text_of(view)
    assert "fleetsim: demo" in text and "policy fedavg" in text and "round 12/20" in text
    assert "accuracy 0.4900" in text  # the latest evaluation (round 9)
    rows = [line.split()[0] for line in text.splitlines() if line.split()[:1] != []
            and line.split()[0].isdigit()]
    assert rows == [str(r) for r in range(4, 12)]  # the last 8 rounds


def test_each_part_has_a_titled_frame_and_the_bar_a_line_of_its_own() -> None:
    view = RunView(info={"scenario": "demo", "policy": "fedavg", "rounds": 20})
    for r in range(3):
        view.add_round(record(r, 0.4 + r / 100), [device(0, "rpi4", "oom", peak=20 << 20)])
    text = text_of(view, width=100)
    titles = [line.split("─ ")[1].split(" ─")[0] for line in text.splitlines()
              if line.startswith("╭─ ")]
    assert titles == ["fleetsim: demo", "learning", "last 8 rounds", "device classes, round 2",
                      "events"]
    bar = next(line for line in text.splitlines() if line.startswith("━"))
    assert set(bar) <= {"━", "╺", "╸", " "}  # nothing else shares the bar's line
    assert any(line.startswith("accuracy   ") for line in text.splitlines())


def test_the_view_fits_the_terminal_height() -> None:
    view = RunView(info={"scenario": "demo", "policy": "fedavg", "rounds": 20})
    for r in range(12):
        view.add_round(record(r, 0.4), [device(0, "phone_low", "ok"), device(1, "rpi4", "ok")])
    for height, expected in ((24, 3), (30, 8), (50, 8), (10, 1)):
        last = rounds_that_fit(view, height)
        assert last == expected
        if height in (24, 30):  # every row used but the prompt's, none more
            assert len(text_of(view, width=100, last=last).splitlines()) == min(height - 1, 28)


def test_view_before_the_first_round_shows_pretraining() -> None:
    view = RunView(info={}, pretrain=(30, 600, 2.5))
    assert "pretraining 30/600" in text_of(view)


def test_plain_observer_prints_one_line_per_round(tmp_path) -> None:
    stream = io.StringIO()
    observer = PlainObserver(tmp_path, stream)
    observer.on_round(record(0, 0.45), [])
    line = stream.getvalue().strip()
    assert line == round_line(record(0, 0.45))
    assert "oom 1" in line and "stragglers 3" in line and "accuracy 0.4500" in line


def device(d: int, cls: str, status: str, plan: str = "train=block.1,head;frozen=embed,block.0",
           peak: int = 12 << 20, cap: int = 16 << 20, error: str = "") -> DeviceRecord:
    return DeviceRecord(d, cls, 3, plan, status, peak, cap, 1e9, 1.0, 0.1, 0.1, 1000, 2000,
                        "h", 2.0, error)


def test_dashboard_shows_classes_events_charts_and_eta() -> None:
    view = RunView(info={"scenario": "demo", "policy": "caff", "rounds": 10,
                         "events": [{"at_s": 350, "class": "phone_low", "memory_factor": 0.4}]})
    for r in range(3):
        view.add_round(record(r, 0.40 + r / 100), [])
    view.add_round(record(3, 0.45), [
        device(0, "phone_low", "oom", peak=18 << 20),
        device(1, "phone_low", "ok", plan="train=head;frozen=embed,block.0,block.1;lora=8:q_proj"),
        device(2, "rpi4", "ok"), device(3, "rpi4", "failed", error="host lost: died")])
    text = text_of(view)
    assert "round 4/10" in text and "ETA" in text
    assert sparkline([0.40, 0.41, 0.42, 0.45]) in text
    assert "r3 t=350s phone_low: memory x0.4" in text  # the squeeze took effect in round 3
    assert "r3 churn spike: online 40 -> 30" in text
    assert "r3 OOM device 0 (phone_low): 18.0 > cap 16.0 MiB" in text
    assert "r3 failed device 3 (rpi4): host lost: died" in text
    low = next(line for line in text.splitlines() if line.startswith("phone_low"))  # a row
    assert "15" in low and "LoRA rank 8" in low and "12.0/16.0 MiB" in low
    rpi = next(line for line in text.splitlines() if line.startswith("rpi4"))
    assert "1.0 blocks" in rpi


def test_sparkline_scales_between_extremes() -> None:
    assert sparkline([1, 2, 3]) == "▁▄█" and sparkline([5, 5]) == "▁▁" and sparkline([]) == ""


class CountingLive(Live):
    """A live display on a 100x30 text console that notes when it is drawn (on the test's
    clock), how many rounds the view then held, and the text drawn."""

    def __init__(self, now: list[float], view: list[RunView]) -> None:
        super().__init__(console=Console(file=io.StringIO(), width=100, height=30,
                                         color_system=None), auto_refresh=False)
        self.now, self.view, self.draws, self.text = now, view, [], ""

    def update(self, renderable: Any, *, refresh: bool = False) -> None:
        self.draws.append((self.now[0], len(self.view[0].rounds)))
        console = Console(file=io.StringIO(), width=100, color_system=None)
        console.print(renderable)
        self.text = console.file.getvalue()
        super().update(renderable, refresh=refresh)


def test_live_view_redraws_at_most_every_two_seconds_and_at_start_and_end(tmp_path) -> None:
    now = [0.0]
    view: list[RunView] = []
    live = CountingLive(now, view)
    observer = LiveObserver(tmp_path, live, clock=lambda: now[0])
    view.append(observer.view)

    def at(t: float, event: str, *args: Any) -> None:
        now[0] = t
        getattr(observer, event)(*args)

    at(0.0, "on_pretrain", 1, 600, 3.0)  # the first change: drawn, whatever the clock says
    at(0.3, "on_pretrain", 2, 600, 2.9)  # 0.3 s after a draw: not drawn
    at(1.99, "on_pretrain", 3, 600, 2.8)
    at(2.0, "on_pretrain", 4, 600, 2.7)  # 2 s after the last draw: drawn
    at(2.5, "on_start", {"scenario": "demo", "policy": "fedavg", "rounds": 5})  # always
    at(3.0, "on_round", record(0, 0.40), [])  # 0.5 s later: not drawn
    at(4.4, "on_round", record(1, 0.41), [])
    at(4.5, "on_round", record(2, 0.42), [])  # 2 s after the start's draw: drawn
    at(6.0, "on_round", record(3, 0.43), [])
    at(6.1, "on_finish", {"initial_accuracy": 0.4, "final_accuracy": 0.43, "sim_time_s": 1,
                          "wall_time_s": 6.1})  # always, with every round
    assert live.draws == [(0.0, 0), (2.0, 0), (2.5, 0), (4.5, 3), (6.1, 4)]
    assert "round 4/5" in live.text and "accuracy 0.4300" in live.text
