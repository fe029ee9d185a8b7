"""What the live dashboard costs: the time to build the view after a round and to draw
it (drawn when a round ends, at most once every two seconds), for a large view: 100 rounds,
100 devices a round over 8 classes, a full event log.

    .venv/bin/python benchmarks/dashboard_overhead.py

Prints milliseconds per build and per draw, and the share of the run's time they take
when drawn at most once every two seconds, as fleetsim does (goal: under 2%).
"""

from __future__ import annotations

import io
import time

from rich.console import Console

from fleetsim.types import DeviceRecord, RoundRecord
from fleetsim.views.dashboard import RunView, render

CLASSES = [f"class_{i}" for i in range(8)]


def big_view() -> RunView:
    view = RunView(info={"scenario": "big", "policy": "caff", "rounds": 1000, "devices": 10000,
                         "hosts": 16, "events": [{"at_s": 50.0, "class": "class_0",
                                                  "memory_factor": 0.4}]})
    for r in range(100):
        record = RoundRecord(r, 10.0 * (r + 1), 10.0, 2.0, 0.4 if r % 5 == 4 else None, None,
                             2.0, 100, 90, 5, 3, 1, 1, 0, 10**7, 2 * 10**7, True, 5000,
                             {c: 625 for c in CLASSES})
        devices = [DeviceRecord(d, CLASSES[d % 8], r, "train=block.3,head;frozen=embed",
                                "oom" if d == 0 else "ok", 30 << 20, 32 << 20, 1e9, 1.0,
                                0.1, 0.1, 1000, 2000, "h", 2.0) for d in range(100)]
        view.add_round(record, devices)
    return view


def main() -> None:
    view = big_view()
    console = Console(file=io.StringIO(), width=140, force_terminal=True)
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        renderable = render(view)
    build_ms = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    for _ in range(n):
        console.print(renderable)
    draw_ms = (time.perf_counter() - start) / n * 1000
    print(f"build after a round: {build_ms:.2f} ms; one draw: {draw_ms:.2f} ms")
    print("at most one build and draw every two seconds: at most "
          f"{(build_ms + draw_ms) / 20:.2f}% of the run's time")


if __name__ == "__main__":
    main()
