"""The live dashboard of a run, built by a pure function (`render`) from a `RunView`:
a header with progress and ETA, accuracy and loss as sparklines, the last rounds, a
panel per device class (online, selected, contributed, memory against the cap, what
they trained), and a log of events (OOMs, failures, drop-outs, churn spikes,
constraint changes). Tests render it into a capture console."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleetsim.types import MIB, DeviceRecord, RoundRecord, StepRecord
from fleetsim.views.fairness import trained_blocks

SPARKS = "▁▂▃▄▅▆▇█"
CHURN_SPIKE = 0.8  # online devices falling below this share of the last round's


@dataclass
class RunView:
    """Everything the dashboard shows, accumulated from the engine's reports."""

    info: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    devices: list[DeviceRecord] = field(default_factory=list)  # the last round's
    events: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    pretrain: tuple[int, int, float] | None = None
    wall_start: float = field(default_factory=time.perf_counter)

    def add_round(self, record: RoundRecord, devices: Sequence[DeviceRecord]) -> None:
        previous = self.rounds[-1] if self.rounds else None
        self.events.extend(round_events(record, devices, previous, self.info.get("events", [])))
        self.rounds.append(record)
        self.devices = list(devices)


def round_events(record: RoundRecord, devices: Sequence[DeviceRecord],
                 previous: RoundRecord | None, changes: Sequence[Mapping[str, Any]]
                 ) -> list[str]:
    """What a round brought that a person watching should notice."""
    r, events = record.round, []
    start = previous.sim_time_s if previous else 0.0
    for change in changes:  # scheduled constraint changes that took effect in this round
        who = change.get("class") or f"devices {change.get('devices')}"
        factors = ", ".join(f"{k.removesuffix('_factor')} x{v:g}" for k, v in change.items()
                            if k.endswith("_factor") and v != 1)
        if start < change["at_s"] <= record.sim_time_s or (previous is None and
                                                           change["at_s"] == 0):
            events.append(f"r{r} t={change['at_s']:g}s {who}: {factors}")
        if change.get("until_s") and start < change["until_s"] <= record.sim_time_s:
            events.append(f"r{r} t={change['until_s']:g}s {who}: back to its profile")
    if previous and previous.online and record.online < CHURN_SPIKE * previous.online:
        events.append(f"r{r} churn spike: online {previous.online} -> {record.online}")
    if record.offline:
        events.append(f"r{r} {record.offline} device(s) went offline mid-round")
    for d in devices:
        if d.status == "oom":
            events.append(f"r{r} OOM device {d.device_id} ({d.device_class}): "
                          f"{d.peak_mem_bytes / MIB:.1f} > cap {d.mem_cap_bytes / MIB:.1f} MiB")
        elif d.status == "failed":
            events.append(f"r{r} failed device {d.device_id} ({d.device_class}): {d.error[:60]}")
    return events


def render(view: RunView, last: int = 8) -> Group:
    """The dashboard as a rich renderable: a framed, titled panel per part."""
    run = [_header(view)]
    if view.pretrain and not view.rounds:
        step, steps, loss = view.pretrain
        run.append(Text(f"pretraining {step}/{steps}  loss {loss:.3f}"))
    total = view.info.get("rounds", 0)
    bar = Table.grid()  # a row of its own: a bare ProgressBar ends without a line break
    bar.add_row(ProgressBar(total=max(total, 1), completed=len(view.rounds), width=60))
    parts = [_panel(Group(*run, bar), f"fleetsim: {view.info.get('scenario', '?')}"),
             _panel(_charts(view), "learning"),
             _panel(_round_table(view.rounds[-last:]), f"last {last} rounds")]
    if view.rounds:
        parts.append(_panel(_class_table(view.rounds[-1], view.devices),
                            f"device classes, round {view.rounds[-1].round}"))
    if view.events:
        parts.append(_panel(Text("\n".join(view.events)), "events"))
    return Group(*parts)


def rounds_that_fit(view: RunView, height: int, most: int = 8) -> int:
    """How many of the last rounds the round panel can list in a terminal `height` rows
    high, beside everything else (at least 1)."""
    classes = len({*(view.rounds[-1].online_by_class if view.rounds else {}),
                   *(d.device_class for d in view.devices)})
    fixed = (5 + bool(view.pretrain and not view.rounds)  # run panel
             + 4 + 3  # learning, the round panel's frame and header
             + (3 + classes if view.rounds else 0) + (2 + len(view.events) if view.events else 0))
    return max(1, min(most, height - fixed - 1))


def _panel(body: Any, title: str) -> Panel:
    return Panel(body, title=title, title_align="left", expand=True)


def _header(view: RunView) -> Text:
    info, done = view.info, len(view.rounds)
    total = info.get("rounds", 0)
    wall = time.perf_counter() - view.wall_start
    sim = view.rounds[-1].sim_time_s if view.rounds else 0.0
    eta = f"{wall / done * (total - done):,.0f} s" if done else "-"
    return Text.assemble(
        f"policy {info.get('policy', '?')}",
        f"  model {info.get('model', '?')}  devices {info.get('devices', '?')}",
        f"  hosts {info.get('hosts', '?')}\n",
        f"round {done}/{total}  simulated {sim:,.0f} s  wall {wall:,.0f} s  ETA {eta}  "
        f"accuracy {_accuracy(view)}")


def _accuracy(view: RunView) -> str:
    evaluated = [r.accuracy for r in view.rounds if r.accuracy is not None]
    if evaluated:
        return f"{evaluated[-1]:.4f}"
    initial = view.info.get("initial_accuracy")
    return f"{initial:.4f} (pretrained)" if initial is not None else "-"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    values = list(values)[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    scale = (len(SPARKS) - 1) / (high - low) if high > low else 0.0
    return "".join(SPARKS[int((v - low) * scale)] for v in values)


def _charts(view: RunView) -> Text:
    accuracy = [r.accuracy for r in view.rounds if r.accuracy is not None]
    loss = [r.train_loss for r in view.rounds if r.train_loss is not None]
    return Text(f"accuracy   {sparkline(accuracy)} {_range(accuracy)}\n"
                f"train loss {sparkline(loss)} {_range(loss)}")


def _range(values: Sequence[float]) -> str:
    return f"({min(values):.4f} .. {max(values):.4f})" if values else ""


def _round_table(rounds: Sequence[RoundRecord]) -> Table:
    steps = bool(rounds) and isinstance(rounds[0], StepRecord)  # asynchronous mode
    extra = ("stale", "age", "in flight") if steps else ()
    table = Table("step" if steps else "round", "sim s", "online", "sel", "ok", "strag",
                  "offl", "oom", "fail", "skip", *extra, "MB up", "MB down", "train loss",
                  "accuracy", box=None, pad_edge=False)
    for column in table.columns:  # a narrow terminal cuts the table, never wraps a title
        column.no_wrap = True
    for r in rounds:
        ages = ((str(r.stale), f"{fmt(r.staleness_mean, 1)}/{r.staleness_max or 0}",
                 str(r.in_flight)) if isinstance(r, StepRecord) else ())
        table.add_row(str(r.round), f"{r.sim_time_s:,.0f}", str(r.online), str(r.selected),
                      str(r.completed), str(r.stragglers), str(r.offline), str(r.oom),
                      str(r.failed), str(r.skipped), *ages, f"{r.bytes_up / 1e6:.1f}",
                      f"{r.bytes_down / 1e6:.1f}", fmt(r.train_loss), fmt(r.accuracy))
    return table


def _class_table(record: RoundRecord, devices: Sequence[DeviceRecord]) -> Table:
    """The last round, class by class."""
    table = Table("class", "online", "sel", "ok", "memory (max used / cap)", "trained",
                  box=None, pad_edge=False)
    classes = sorted({*record.online_by_class, *(d.device_class for d in devices)})
    for name in classes:
        mine = [d for d in devices if d.device_class == name]
        ok = [d for d in mine if d.status == "ok"]
        cap = max((d.mem_cap_bytes for d in mine), default=0)
        used = max((d.peak_mem_bytes for d in ok), default=0)
        table.add_row(name, str(record.online_by_class.get(name, "-")), str(len(mine)),
                      str(len(ok)), _bar(used, cap), _trained(ok))
    return table


def _bar(used: int, cap: int, width: int = 16) -> str:
    if not cap:
        return "-"
    filled = min(width, round(width * used / cap))
    return f"{'█' * filled}{'░' * (width - filled)} {used / MIB:.1f}/{cap / MIB:.1f} MiB"


def _trained(ok: Sequence[DeviceRecord]) -> str:
    if not ok:
        return "-"
    ranks = sorted({d.plan.split("lora=")[1].split(":")[0] for d in ok if "lora=" in d.plan})
    blocks = sum(trained_blocks(d.plan) for d in ok) / len(ok)
    return f"{blocks:.1f} blocks" + (f", LoRA rank {'/'.join(ranks)}" if ranks else "")


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
