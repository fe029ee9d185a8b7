"""The live view renders from data; plain lines say what happened."""

from __future__ import annotations

import io

from rich.console import Console

from fleetsim.monitor import PlainObserver, RunView, render, round_line
from fleetsim.types import RoundRecord


def record(r: int, accuracy: float | None) -> RoundRecord:
    return RoundRecord(round=r, sim_time_s=100.0 * (r + 1), round_time_s=100.0, wall_time_s=1.0,
                       accuracy=accuracy, loss=None, train_loss=1.5, selected=13, completed=10,
                       stragglers=3, offline=0, oom=1, failed=0, skipped=2, bytes_up=2_000_000,
                       bytes_down=4_000_000, aggregated=True)


def text_of(view: RunView) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render(view))
    return console.file.getvalue()


def test_view_shows_header_progress_and_last_rounds() -> None:
    view = RunView(info={"scenario": "demo", "policy": "fedavg", "model": "gpt-2x64",
                         "rounds": 20, "devices": 60, "hosts": 2})
    view.rounds = [record(r, 0.4 + r / 100 if r % 5 == 4 else None) for r in range(12)]
    text = text_of(view)
    assert "demo" in text and "policy fedavg" in text and "round 12/20" in text
    assert "accuracy 0.4900" in text  # the latest evaluation (round 9)
    rows = [line.split()[0] for line in text.splitlines() if line.split()[:1] != []
            and line.split()[0].isdigit()]
    assert rows == [str(r) for r in range(4, 12)]  # the last 8 rounds


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
