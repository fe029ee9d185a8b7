"""When devices are online: always, Bernoulli per round, a two-state Markov chain, or a
trace. One model covers a group of devices (a fleet entry) and answers, vectorised,
who is online at a simulated time and when an online device next goes offline.

Models that draw keep their generator and state, and hand both over for checkpoints:
a resumed run continues the very same churn.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

NEVER = math.inf


class Availability(Protocol):
    def online(self, now_s: float) -> np.ndarray: ...  # bool per device of the group
    def offline_at(self, index: int, now_s: float) -> float: ...  # next drop, or NEVER
    def snapshot(self) -> dict[str, Any]: ...
    def restore(self, snap: dict[str, Any]) -> None: ...


class Always:
    def __init__(self, count: int) -> None:
        self.count = count

    def online(self, now_s: float) -> np.ndarray:
        return np.ones(self.count, bool)

    def offline_at(self, index: int, now_s: float) -> float:
        return NEVER

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, snap: dict[str, Any]) -> None:
        pass


class Bernoulli:
    """Each device is online with probability p, drawn afresh at every new time asked
    (the engine asks once per round); it stays so for the round."""

    def __init__(self, count: int, p: float, rng: np.random.Generator) -> None:
        self.count, self.p, self.rng = count, p, rng
        self.last: tuple[float, np.ndarray] | None = None

    def online(self, now_s: float) -> np.ndarray:
        if self.last is None or self.last[0] != now_s:
            self.last = (now_s, self.rng.random(self.count) < self.p)
        return self.last[1].copy()

    def offline_at(self, index: int, now_s: float) -> float:
        return NEVER

    def snapshot(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "last": self.last}

    def restore(self, snap: dict[str, Any]) -> None:
        self.rng.bit_generator.state = snap["rng"]
        self.last = snap["last"]


class Markov:
    """Two states with exponentially distributed stays (means mean_online_s and
    mean_offline_s); each device starts in the stationary distribution."""

    def __init__(self, count: int, mean_online_s: float, mean_offline_s: float,
                 rng: np.random.Generator) -> None:
        self.means = np.array([mean_offline_s, mean_online_s])  # indexed by state
        self.rng = rng
        self.state = rng.random(count) < mean_online_s / (mean_online_s + mean_offline_s)
        self.switch_s = rng.exponential(self.means[self.state.astype(int)])

    def _advance(self, now_s: float) -> None:
        due = self.switch_s <= now_s
        while due.any():
            self.state[due] = ~self.state[due]
            self.switch_s[due] += self.rng.exponential(self.means[self.state[due].astype(int)])
            due = self.switch_s <= now_s

    def online(self, now_s: float) -> np.ndarray:
        self._advance(now_s)
        return self.state.copy()

    def offline_at(self, index: int, now_s: float) -> float:
        self._advance(now_s)
        return float(self.switch_s[index]) if self.state[index] else now_s

    def snapshot(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "state": self.state.copy(),
                "switch_s": self.switch_s.copy()}

    def restore(self, snap: dict[str, Any]) -> None:
        self.rng.bit_generator.state = snap["rng"]
        self.state, self.switch_s = snap["state"].copy(), snap["switch_s"].copy()


class Trace:
    """Online intervals [start, end) per device, repeating every `period_s` when given
    (FedScale's traces cover a finite span)."""

    def __init__(self, intervals: Sequence[np.ndarray], period_s: float | None) -> None:
        self.starts = [iv[:, 0] for iv in intervals]
        self.ends = [iv[:, 1] for iv in intervals]
        self.period_s = period_s

    def _local(self, now_s: float) -> tuple[float, float]:
        """(time within the trace, start of the current period)."""
        if not self.period_s:
            return now_s, 0.0
        base = math.floor(now_s / self.period_s) * self.period_s
        return now_s - base, base

    def _current(self, index: int, t: float) -> int:
        """Index of the interval holding t, or -1."""
        i = int(np.searchsorted(self.starts[index], t, side="right")) - 1
        return i if i >= 0 and t < self.ends[index][i] else -1

    def online(self, now_s: float) -> np.ndarray:
        t, _ = self._local(now_s)
        return np.array([self._current(i, t) >= 0 for i in range(len(self.starts))], bool)

    def offline_at(self, index: int, now_s: float) -> float:
        t, base = self._local(now_s)
        i = self._current(index, t)
        return now_s if i < 0 else base + float(self.ends[index][i])

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, snap: dict[str, Any]) -> None:
        pass


def load_trace(path: Path, count: int) -> tuple[list[np.ndarray], float | None]:
    """Online intervals for `count` devices from a trace file, and its period.

    - FedScale's behaviour trace as JSON (FedScale ships it pickled; `json.dump` the
      same map): {client: {"active": [t...], "inactive": [t...], "finish_time": T}}: a
      client turns active at each `active` time and inactive at the next `inactive` one.
    - Plain JSON: {"period_s": T (optional), "devices": [[[start, end], ...], ...]}.
    - CSV with a header `device,start_s,end_s`, one online interval a row.
    Devices take the trace's clients in order, wrapping around when there are fewer.
    Raises ValueError with what is wrong."""
    if path.suffix == ".csv":
        per_device, period = _read_csv(path), None
    else:
        raw = json.loads(path.read_text())
        if isinstance(raw, dict) and "devices" in raw:
            per_device, period = raw["devices"], raw.get("period_s")
        elif isinstance(raw, dict) and raw:
            per_device, period = _fedscale(raw)
        else:
            raise ValueError("expected FedScale's client map or {'devices': [...]}")
    if not per_device:
        raise ValueError("the trace holds no device")
    intervals = [_intervals(per_device[i % len(per_device)]) for i in range(count)]
    return intervals, float(period) if period else None


def _fedscale(raw: dict[str, Any]) -> tuple[list[list[list[float]]], float | None]:
    clients, period = [], 0.0
    for key in sorted(raw, key=lambda k: (len(str(k)), str(k))):
        client = raw[key]
        active, inactive = list(client["active"]), list(client["inactive"])
        end = float(client.get("finish_time", max([*active, *inactive], default=0.0)))
        period = max(period, end)
        pairs = []
        for start in active:
            stop = next((t for t in inactive if t > start), end)
            pairs.append([float(start), float(stop)])
        clients.append(pairs)
    return clients, period or None


def _read_csv(path: Path) -> list[list[list[float]]]:
    rows: dict[int, list[list[float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(int(row["device"]), []).append([float(row["start_s"]),
                                                            float(row["end_s"])])
    return [rows[d] for d in sorted(rows)]


def _intervals(pairs: Sequence[Sequence[float]]) -> np.ndarray:
    array = np.array(pairs, dtype=float).reshape(-1, 2)
    array = array[np.argsort(array[:, 0], kind="stable")]
    if (array[:, 1] < array[:, 0]).any():
        raise ValueError("an interval ends before it starts")
    return array
